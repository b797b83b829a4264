"""The backup catalog over any object store: layout, metadata, checksums, audit.

Owns what a stored backup *is*, independent of where it is stored. A backup named
`<date>_<dataset>_<kind>` (see `naming`) is a directory-like prefix holding the
encrypted payload `<name>.bak` (a tar of a plain-format base backup, AES-256-GCM in
chunks, see `crypto`) and `catalog.json`: dataset, kind, time, sizes, the SHA-256 of
every stored object (and its ETag where the store has one), encryption info and every
verification result. A pgBackRest set is registered as a catalog entry without a payload
(pgBackRest keeps its own files).

A payload is bound to its entry: its chunks authenticate only as the backup (id, data
set, takenAt) it was written for (`crypto`, format 2), and `open_payload` checks its
binding before the first byte and its SHA-256 and size against the entry before the last
(an entry written before binding, format 1, is read on the checksum alone and says
"unbound (format 1)"). `check_integrity` is the cheap pass right before a restore: the
object exists with the size, ETag and binding cataloged, read from its first bytes only.
Failures of the backup itself raise `DamagedBackup` subclasses (`IntegrityFailed`,
`crypto.AuthenticationFailed`, `crypto.SwappedPayload`, `crypto.ChecksumMismatch`). The
catalog is not signed: what an entry may claim is held in check by the key (a payload
authenticates only as its own backup) and by the checksums.

`CatalogStore` implements the `BackupStore` protocol for the S3 and filesystem stores,
which only supply the `Objects` primitives. Every backup and verification is written to
the audit sink (the journal's `audit`) with who or what triggered it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from controller.backups import BackupStore, DamagedBackup, crypto, naming
from controller.model import Backup, PermanentError
from controller.secrets import SecretError, SecretRef, Secrets, redact

log = logging.getLogger(__name__)

AuditSink = Callable[..., None]
"""Called as `audit(at=..., actor=..., action=..., detail=...)`, like `Journal.audit`."""

READ_CHUNK = 1 << 20
FORMATS = ("basebackup", "pgbackrest")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DAMAGED = ("this backup can never be proven intact: take a new backup (the entry's "
            "catalog.json was damaged or edited)")


class Peek(NamedTuple):
    """The first bytes of a stored object, its whole size and its ETag (None: the store
    has none, e.g. a directory)."""

    head: bytes
    size: int
    etag: str | None


class Stray(NamedTuple):
    """A payload no catalog entry names: its backup's name and when it was last written."""

    name: str
    modified: float


class Objects(Protocol):
    """The storage primitives a catalog needs; keys are '/'-separated, relative."""

    def writer(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...
    def reader(self, key: str) -> BinaryIO: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def peek(self, key: str, n: int) -> Peek: ...
    def names(self) -> list[str]: ...
    def uncataloged(self) -> list[Stray]:
        """Every payload (`<name>/<name>.bak`) whose `<name>/catalog.json` is missing."""
        ...
    def location(self, key: str) -> str: ...
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is no error (pruning is idempotent)."""
        ...


class StoreOptions(BaseModel):
    """Options every catalog store shares."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    encryption_key: SecretRef | None = Field(
        None, alias="encryptionKey",
        description="base64 of a 32-byte AES-256 key; required to add or read payloads")
    chunk_size: int = Field(crypto.DEFAULT_CHUNK, alias="chunkSize", ge=4096, le=64 << 20)


class CatalogError(PermanentError):
    pass


class IntegrityFailed(CatalogError, DamagedBackup):
    """A stored object is missing or not as cataloged, or the entry lacks what would
    prove it intact."""


class EncryptionKeyError(CatalogError):
    """The store's encryption key is missing, unreadable or not a 32-byte key: a problem
    of configuration, not of any backup (a verifier records nothing because of it)."""


def _key_fix(ref: SecretRef, problem: str) -> str:
    """What to do about an unreadable key, by what went wrong (never its value)."""
    if "No such file" in problem:
        return ("put the key the backups were written with there (the base64 of its 32 "
                "bytes), or point `encryptionKey.fromFile` at the file that holds it")
    if "Permission denied" in problem:
        return (f"let the user running the controller (uid {os.geteuid()}) read it, "
                "keeping it private: e.g. `chown` it to that user with mode 0400")
    if "is not set" in problem:
        return (f"set {ref.from_env} to the base64 of the key the backups were written with, "
                "or point `encryptionKey` at the file that holds it")
    if "base64" in problem:
        return ("it must hold the base64 of the 32-byte key the backups were written with "
                "(a new store's key: `openssl rand -base64 32`)")
    return "make it readable by the controller and hold the base64 of the 32-byte key"


class CatalogStore(BackupStore):
    """A BackupStore: list / add / open / record verification, over `Objects`."""

    Options: type[StoreOptions] = StoreOptions

    def __init__(self, options: StoreOptions, *, secrets: Secrets | None = None,
                 audit: AuditSink | None = None):
        self.options = options
        self._secrets = secrets or Secrets()
        self._audit = audit
        self.objects: Objects = self._objects()

    def _objects(self) -> Objects:
        raise NotImplementedError

    # --- key ---------------------------------------------------------------------------------

    def data_key(self) -> bytes:
        """The 32-byte key backups in this store are encrypted with (for code that writes
        into it: taking a backup, the off-site copy). Never logged."""
        ref = self.options.encryption_key
        if ref is None:
            raise CatalogError("this store has no `encryptionKey` configured; backups are "
                               "always encrypted at rest, so one is required to add or read "
                               "them (base64 of 32 random bytes, from a file, env or Secret)")
        try:
            key = self._secrets.reveal_bytes(ref)
        except SecretError as exc:
            raise EncryptionKeyError(f"the store's `encryptionKey` is unusable: {exc}; "
                                     f"{_key_fix(ref, str(exc))}") from None
        if len(key) != 32:
            raise EncryptionKeyError(
                f"the store's `encryptionKey` ({ref.describe()}) holds {len(key)} bytes once "
                "base64-decoded, AES-256 needs exactly 32: configure the key the backups were "
                "written with (the base64 of its 32 bytes; a new store's key: "
                "`openssl rand -base64 32`)")
        return key

    def check_key(self) -> None:
        """Raise EncryptionKeyError (or CatalogError) unless the key can be used."""
        self.data_key()

    # --- audit -------------------------------------------------------------------------------

    def audit(self, *, actor: str, action: str, detail: str) -> None:
        log.info("%s by %s: %s", action, actor, redact(detail))
        if self._audit is not None:
            try:
                self._audit(at=time.time(), actor=actor, action=action, detail=redact(detail))
            except Exception:  # the audit trail must not hide the operation's own outcome
                log.exception("could not write the audit record for %s", action)

    # --- reading -----------------------------------------------------------------------------

    def entry(self, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.objects.get_bytes(naming.catalog_key(name)))
        except FileNotFoundError:
            raise CatalogError(f"no backup named {name!r} in {self.objects.location('')}") \
                from None
        return data

    def list(self, *, dataset: str) -> list[Backup]:
        """Newest first, each with its latest verification state."""
        found: list[Backup] = []
        for name in self.objects.names():
            parsed = naming.parse_name(name)
            if parsed is None or parsed[1] != dataset:
                continue
            try:
                backup = self.to_backup(self.entry(name))
                if backup.id != name or backup.dataset != dataset:
                    raise ValueError(f"it describes {backup.id!r} of {backup.dataset!r}")
            except (CatalogError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # one malformed (or tampered) entry must not hide every other backup
                log.warning("skipping unreadable catalog entry %s: %s: %s", name,
                            type(exc).__name__, exc)
                continue
            found.append(backup)
        return sorted(found, key=lambda b: (b.taken_at, b.id), reverse=True)

    def to_backup(self, e: dict[str, Any]) -> Backup:
        last = (e.get("verifications") or [None])[-1]
        keep = ("format", "objects", "encryption", "plainSize", "source", "pgbackrest",
                "createdBy", "createdAt")
        meta: dict[str, Any] = {k: e[k] for k in keep if k in e}
        if last is not None:
            meta["lastVerification"] = last
        location = (self.objects.location(naming.payload_key(e["id"]))
                    if e.get("format") == "basebackup" else e.get("location", ""))
        return Backup(id=e["id"], dataset=e["dataset"], kind=e["kind"],
                      taken_at=float(e["takenAt"]), location=location,
                      verified=None if last is None else last["passed"] is True,
                      verification="" if last is None else str(last["summary"]),
                      size=e.get("size"), meta=meta)

    def open_raw(self, key: str) -> BinaryIO:
        return self.objects.reader(key)

    @contextlib.contextmanager
    def open_payload(self, backup: Backup | str) -> Iterator[crypto.DecryptingReader]:
        """The authenticated plaintext (a tar stream) of a base-backup payload, checked
        against its catalog entry while it streams: its binding before the first byte
        (`crypto.SwappedPayload`), every chunk (`crypto.AuthenticationFailed`), and the
        stored SHA-256 and size before the last chunk is released
        (`crypto.ChecksumMismatch`), so a reader that got to the end got the backup the
        catalog describes."""
        if isinstance(backup, str):
            backup = self.to_backup(self.entry(backup))
        expected = expected_payload(backup)
        key = self.data_key()
        try:
            raw = self.objects.reader(naming.payload_key(backup.id))
        except FileNotFoundError:
            raise IntegrityFailed(f"{backup.id}: its payload "
                                  f"{self.objects.location(naming.payload_key(backup.id))} is "
                                  "missing from the store") from None
        try:
            yield crypto.DecryptingReader(raw, key, name=backup.id, expected=expected)
        finally:
            raw.close()

    def check_integrity(self, backup: Backup) -> str:
        """The cheap pass right before a restore (`BackupStore.check_integrity`): every
        stored object exists with the size and ETag cataloged, and a payload's header is
        bound to this entry; reads a payload's first bytes only."""
        objects = stored_objects(backup)
        if not objects:
            return (f"{backup.id}: no stored object in the catalog to check (a "
                    f"{backup.meta.get('format')} set; its tool checks its files as it "
                    "restores)")
        said = []
        for obj in objects:
            key = obj["key"]
            try:
                got = self.objects.peek(key, crypto.MAX_HEADER)
            except FileNotFoundError:
                raise IntegrityFailed(f"{backup.id}: {self.objects.location(key)} is missing "
                                      "from the store") from None
            # whose payload it is, said first (a swapped payload differs in size, too)
            bound = (f"; payload {payload_binding(backup, got.head)}"
                     if key == naming.payload_key(backup.id) else "")
            if got.size != obj["size"]:
                raise IntegrityFailed(f"{backup.id}: {self.objects.location(key)} holds "
                                      f"{got.size} bytes, the catalog says {obj['size']}")
            if obj.get("etag") and got.etag != obj["etag"]:
                raise IntegrityFailed(
                    f"{backup.id}: {self.objects.location(key)} was rewritten since it was "
                    f"verified (ETag {got.etag}, cataloged {obj['etag']}); if it was copied "
                    "on purpose, verify it again (`failoverctl verify`), which records the "
                    "new ETag")
            said.append(f"{key}: {got.size} bytes" + (", ETag" if obj.get("etag") else "")
                        + " as cataloged" + bound)
        return f"{backup.id}: " + "; ".join(said)

    # --- writing -----------------------------------------------------------------------------

    def _put_entry(self, entry: dict[str, Any]) -> None:
        data = json.dumps(entry, indent=1, sort_keys=True).encode()
        self.objects.put_bytes(naming.catalog_key(entry["id"]), data)

    def add_directory(self, source: Path, *, dataset: str, kind: str, taken_at: float,
                      actor: str, source_info: dict[str, Any] | None = None,
                      stage_in: CatalogStore | None = None) -> Backup:
        """Tar `source` (a plain base backup) through encryption into the store, streamed.

        With `stage_in` (the off-site store), the same tar stream is also encrypted with
        that store's key into its payload object in the same pass (`_StagedCopy`), which
        the entry records as `offsiteStaged`; no catalog lists it until
        `offsite.copy_offsite` checks it there, once this backup is verified."""
        name = naming.backup_name(taken_at=taken_at, dataset=dataset, kind=kind)
        key, started = self.data_key(), time.monotonic()
        pkey = naming.payload_key(name)
        binding = crypto.Binding(id=name, dataset=dataset, taken_at=taken_at)
        staged = None if stage_in is None else _StagedCopy(stage_in, pkey, binding)
        finishing: Future[dict[str, Any] | None] | None = None
        try:
            with self.objects.writer(pkey) as sink:
                enc = crypto.EncryptingWriter(sink, key, binding=binding,
                                              chunk_size=self.options.chunk_size)
                out: crypto.EncryptingWriter | _Both = (
                    enc if staged is None else _Both(enc, staged))
                # files copied 1 MiB at a time (tarfile's default is 16 KiB: a Python loop
                # turn and three buffer copies every 16 KiB, holding the GIL)
                with tarfile.open(fileobj=out, mode="w|", bufsize=READ_CHUNK,  # type: ignore[call-overload]
                                  copybufsize=READ_CHUNK) as tar:
                    tar.add(str(source), arcname=".")
                enc.close()
                if staged is not None:  # its upload completes while the payload's does
                    finishing = staged.finish_beside()
        except BaseException as exc:
            if staged is not None:
                if finishing is not None and finishing.result() is not None:
                    staged.remove()  # stored, but the backup it copies was not
                staged.drop(exc, quietly=True)
            raise
        copy = None if finishing is None else finishing.result()
        entry = {
            "id": name, "dataset": dataset, "kind": kind, "takenAt": taken_at,
            "format": "basebackup", "size": enc.stored_size, "plainSize": enc.plain_size,
            "objects": [{"key": pkey, "size": enc.stored_size,
                         "sha256": enc.sha256.hexdigest(), "seal": enc.seal(),
                         "etag": self.objects.peek(pkey, 0).etag}],
            "encryption": {"algorithm": crypto.ALGORITHM, "chunkSize": self.options.chunk_size,
                           "keyId": crypto.key_id(key), "payloadFormat": crypto.FORMAT_BOUND},
            "source": source_info or {}, "createdBy": actor, "createdAt": time.time(),
            "verifications": [], **({"offsiteStaged": copy} if copy else {}),
        }
        self._put_entry(entry)
        self.audit(actor=actor, action="backup",
                   detail=f"stored {name} ({enc.stored_size} bytes, "
                          f"{time.monotonic() - started:.2f} s) at {self.objects.location(pkey)}")
        return self.to_backup(entry)

    def register(self, *, dataset: str, kind: str, taken_at: float, actor: str,
                 format: str, location: str, size: int | None,
                 details: dict[str, Any]) -> Backup:
        """Catalog a backup kept elsewhere (a pgBackRest set): no payload, no objects."""
        name = naming.backup_name(taken_at=taken_at, dataset=dataset, kind=kind)
        entry = {"id": name, "dataset": dataset, "kind": kind, "takenAt": taken_at,
                 "format": format, "location": location, "size": size, "objects": [],
                 format: details, "createdBy": actor, "createdAt": time.time(),
                 "verifications": []}
        self._put_entry(entry)
        self.audit(actor=actor, action="backup", detail=f"registered {format} backup {name} "
                                                         f"at {location}")
        return self.to_backup(entry)

    def record_verification(self, name: str, result: dict[str, Any], *, actor: str,
                            etags: dict[str, str | None] | None = None) -> Backup:
        """Append a verification result (passed, at, durationS, summary, checks); a passed
        one records the `etags` (object key -> ETag) of the bytes it proved, which the
        integrity pass before a restore compares."""
        entry = self.entry(name)
        entry.setdefault("verifications", []).append({**result, "by": actor})
        if result["passed"] and etags:
            for obj in entry.get("objects") or []:
                if obj.get("key") in etags:
                    obj["etag"] = etags[obj["key"]]
        self._put_entry(entry)
        self.audit(actor=actor, action="verify",
                   detail=f"{name}: {'passed' if result['passed'] else 'FAILED'}: "
                          f"{result['summary']}")
        return self.to_backup(entry)

    def record_damage(self, backup: Backup, *, reason: str, actor: str) -> str:
        """Write a backup found damaged at restore time back to its entry, as a failed
        verification (check `restore`) with the reason and the time: selection, readiness,
        the verifier and the next restore then see it as not verified. Returns what was
        recorded, for the restore's evidence."""
        at = time.time()
        detail = redact(reason)[:1000]
        self.record_verification(backup.id, {
            "passed": False, "at": at, "durationS": 0.0,
            "summary": f"restore failed: {detail}"[:1000],
            "checks": [{"name": "restore", "passed": False, "seconds": 0.0,
                        "detail": detail}]}, actor=actor)
        return (f"marked not verified at {naming.iso(at)} in "
                f"{self.objects.location(naming.catalog_key(backup.id))}")


class _StagedCopy:
    """The off-site copy of a payload, written as the payload is (`add_directory`): the
    plaintext encrypted with the off-site store's key, bound to the same backup, and its
    SHA-256 taken on the way (the read-back check compares it). A failure of the off-site
    store drops the copy (its upload aborted, logged), never the backup: the off-site
    phase then copies the verified backup from the store instead."""

    def __init__(self, store: CatalogStore, key: str, binding: crypto.Binding):
        self.store, self.key, self.dropped = store, key, False
        self.plain = crypto.BackgroundSha256()
        self._writer: contextlib.AbstractContextManager[BinaryIO] | None = None
        self._enc: crypto.EncryptingWriter | None = None
        try:
            data_key = store.data_key()
            self._writer = store.objects.writer(key)
            self._enc = crypto.EncryptingWriter(self._writer.__enter__(), data_key,
                                                binding=binding,
                                                chunk_size=store.options.chunk_size)
        except Exception as exc:
            self.drop(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._enc is not None:
            self.plain.update(data if isinstance(data, bytes) else bytes(data))
            try:
                self._enc.write(data)
            except Exception as exc:
                self.drop(exc)

    def drop(self, exc: BaseException, *, quietly: bool = False) -> None:
        """Abort the copy (the store's writer removes what it wrote); `quietly`: the
        backup itself failed, so there is no copy to miss."""
        writer, self._writer, self._enc = self._writer, None, None
        if not quietly:
            self._dropped(exc)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.__exit__(type(exc), exc, exc.__traceback__)

    def _dropped(self, exc: BaseException) -> None:
        if not self.dropped:
            self.dropped = True
            log.warning("dropped the off-site copy of %s written as it was taken (%s); "
                        "the off-site phase copies the verified backup instead", self.key,
                        redact(f"{type(exc).__name__}: {exc}"))

    def finish(self) -> dict[str, Any] | None:
        """Seal and store the copy; what the entry records of it (None: dropped)."""
        enc, writer = self._enc, self._writer
        if enc is None or writer is None:
            return None
        try:
            enc.close()
        except Exception as exc:
            self.drop(exc)
            return None
        self._enc = self._writer = None
        try:
            writer.__exit__(None, None, None)  # a failing upload aborts itself
        except Exception as exc:
            self._dropped(exc)
            return None
        return {"location": self.store.objects.location(self.key), "key": self.key,
                "size": enc.stored_size, "sha256": enc.sha256.hexdigest(), "seal": enc.seal(),
                "keyId": crypto.key_id(self.store.data_key()),
                "chunkSize": self.store.options.chunk_size,
                "plainSha256": self.plain.hexdigest()}

    def finish_beside(self) -> Future[dict[str, Any] | None]:
        """`finish` in a thread of its own, so that the two stores assemble their
        multipart uploads at the same time (each takes a while: ~0.3 s per 100 MB on
        moto's server), not one after the other."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="staged-copy")
        try:
            return pool.submit(contextvars.copy_context().run, self.finish)
        finally:
            pool.shutdown(wait=False)

    def remove(self) -> None:
        """Remove the stored copy (its backup failed after the copy was stored); a copy
        left behind is a stray, pruned after `retention.strayAfter`."""
        try:
            self.store.objects.delete(self.key)
        except Exception as exc:
            log.warning("could not remove the off-site copy %s of a failed backup (%s); "
                        "it is pruned as a stray later", self.key,
                        redact(f"{type(exc).__name__}: {exc}"))


class _Both:
    """The tar stream to the payload and to its staged off-site copy, in one pass."""

    def __init__(self, payload: crypto.EncryptingWriter, copy: _StagedCopy):
        self.payload, self.copy = payload, copy

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.copy.write(data)
        return self.payload.write(data)


def sha256_stream(src: BinaryIO, *, chunk: int = READ_CHUNK) -> tuple[str, int]:
    """(hex digest, size) of a stream, read in chunks."""
    h, size = hashlib.sha256(), 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    readinto = getattr(src, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                break
            h.update(view[:n])
            size += n
        else:
            data = src.read(chunk)
            if not data:
                break
            h.update(data)
            size += len(data)
    return h.hexdigest(), size


def payload_binding(backup: Backup, head: bytes) -> str:
    """Whom the payload whose first bytes are `head` says it is ("bound to ... (format 2)"
    or "unbound (format 1) ..."); crypto.SwappedPayload when it is another backup's."""
    header = crypto.parse_header(head, name=backup.id)
    crypto.check_binding(header, expected_payload(backup), name=backup.id)
    return header.describe()


def expected_payload(backup: Backup) -> crypto.Expected:
    """What the catalog says the backup's payload is, for the checks while it streams."""
    key = naming.payload_key(backup.id)
    obj = next((o for o in stored_objects(backup) if o["key"] == key), None)
    if obj is None:
        raise IntegrityFailed(f"catalog entry {backup.id}: no payload object {key} in "
                              f"`objects`; {_DAMAGED}")
    encryption = backup.meta.get("encryption") or {}
    bound = encryption.get("payloadFormat", 1) >= crypto.FORMAT_BOUND
    return crypto.Expected(
        binding=crypto.Binding(id=backup.id, dataset=backup.dataset, taken_at=backup.taken_at),
        bound=bound, sha256=obj["sha256"], size=obj["size"],
        seal=str(obj["seal"]) if bound and obj.get("seal") else None)


def stored_objects(backup: Backup) -> list[dict[str, Any]]:
    """The catalog entry's stored objects, each with a key, a size and a SHA-256; an
    entry that lacks them cannot be proven intact and fails (IntegrityFailed), naming the
    field."""
    where = f"catalog entry {backup.id}"
    fmt = backup.meta.get("format")
    if fmt not in FORMATS:
        raise IntegrityFailed(f"{where}: `format` is {fmt!r}, expected one of "
                              f"{', '.join(FORMATS)}; {_DAMAGED}")
    objects = backup.meta.get("objects")
    if objects is None:
        objects = []
    if not isinstance(objects, list):
        raise IntegrityFailed(f"{where}: `objects` is not a list; {_DAMAGED}")
    if fmt == "basebackup" and not objects:
        raise IntegrityFailed(f"{where}: `objects` is empty, a base backup stores its "
                              f"payload there; {_DAMAGED}")
    for i, obj in enumerate(objects):
        field = f"{where}: objects[{i}]"
        if not isinstance(obj, dict):
            raise IntegrityFailed(f"{field} is not an object; {_DAMAGED}")
        if not isinstance(obj.get("key"), str) or not obj["key"]:
            raise IntegrityFailed(f"{field} has no `key` (the stored object's name); "
                                  f"{_DAMAGED}")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            what = "no `size`" if size is None else f"`size` {size!r}, not a byte count"
            raise IntegrityFailed(f"{field} ({obj['key']}) has {what}, the stored size to "
                                  f"check against; {_DAMAGED}")
        digest = obj.get("sha256")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            what = "no `sha256`" if digest is None else "a `sha256` that is not 64 hex digits"
            raise IntegrityFailed(f"{field} ({obj['key']}) has {what}, the checksum taken "
                                  f"when it was stored; {_DAMAGED}")
    return objects

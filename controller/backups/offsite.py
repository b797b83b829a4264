"""The off-site copy of a backup: written to a second store under its own key, then proven
there.

Owns copying one base-backup payload from the store it was taken into to the off-site
store (another site, endpoint or bucket, with its own `encryptionKey`). The backup job
writes the copy while the backup is taken, in the same pass (`CatalogStore.add_directory`
with `stage_in`: the tar stream encrypted with both keys, so the off-site phase does not
read the payload back from the store and re-encrypt it): this "staged" copy is in no
catalog, so nothing lists or restores it, until the backup is verified; `copy_offsite`
then catalogs it, and `discard_staged` removes it when the verification fails. Without
a staged copy (a backup taken otherwise, or staging failed: an off-site store that
fails never fails the take) the payload is decrypted with the source key and
re-encrypted with the off-site key while it streams, chunk by chunk, so no plaintext
ever touches a disk and memory stays at a few chunks. Either way the copy is then read
back from the off-site store and checked there: its binding, its stored SHA-256 and
size against what was written, every chunk decrypted with the off-site key, and the
plaintext's SHA-256 equal to the source's. Only then is the copy's catalog entry marked
verified (a failed check is recorded as a failed verification: never restored). A copy
cut mid-way leaves no entry (the stores' writers abort or remove partial objects). The
emergency plans want every backup "kept locally and off-site": readiness fails without a
verified copy here.

A pgBackRest set keeps its files in pgBackRest's repositories, so its off-site copy is
a backup into the off-site repository (`offsiteRepo`, its own `repoN-cipher-pass`),
which `archive-push` fills with the WAL as well: `copy_pgbackrest` takes it, proves it
with `pgbackrest verify --repo=N` and registers it in the set's off-site store, so the
off-site catalog lists every data set's copies alike. pgBackRest (2.45) copies no set
from one repository to another, and a repository's files cannot be re-encrypted under
another pass without rewriting its manifests and info files behind pgBackRest's back, so
the copy is a backup of the database taken a moment after the set, not the set's bytes.
To keep it from costing a second full backup every time, it is a differential backup
against the off-site repository's newest full set (only the files changed since cross
the link; a restore needs that full and the diff, both in repoN, both proven by the
same `verify`), and a full one when there is none, when it is older than
`offsiteFullEvery` (a week by default: the diffs grow with the changes since), when it
was never proven there, or when the last off-site check failed (`offsite_type`). The
trade-off: a diff off-site depends on its full there; a damaged full fails the next
check and the copy after it is a full again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from controller import fencing
from controller.backups import crypto, naming
from controller.backups.catalog import READ_CHUNK, CatalogError, CatalogStore
from controller.backups.hosts import CommandError, LocalHost
from controller.backups.take import as_user, register_pgbackrest
from controller.backups.verify import judge_pgbackrest, parse_pgbackrest_verify
from controller.model import Backup, PermanentError
from controller.plan import PgBackRestSource, format_duration


class OffsiteError(PermanentError):
    pass


@dataclass(frozen=True)
class Written:
    """An off-site payload as it was written: what its read-back check compares."""

    size: int
    sha256: str
    seal: str | None  # None: staged by a controller that sealed nothing
    plain_sha256: str
    etag: str | None
    chunk_size: int


def _encrypt_copy(source: CatalogStore, offsite: CatalogStore, backup: Backup, key: bytes
                  ) -> Written:
    """Stream the source's authenticated plaintext into the off-site payload, encrypted
    with the off-site `key` and bound to the same backup (id, data set, takenAt)."""
    binding = crypto.Binding(id=backup.id, dataset=backup.dataset, taken_at=backup.taken_at)
    plain = crypto.BackgroundSha256()
    pkey = naming.payload_key(backup.id)
    with source.open_payload(backup) as reader, offsite.objects.writer(pkey) as sink:
        enc = crypto.EncryptingWriter(sink, key, binding=binding,
                                      chunk_size=offsite.options.chunk_size)
        while chunk := reader.read(READ_CHUNK):
            plain.update(chunk)
            enc.write(chunk)
        enc.close()
    return Written(enc.stored_size, enc.sha256.hexdigest(), enc.seal(), plain.hexdigest(),
                   offsite.objects.peek(pkey, 0).etag, offsite.options.chunk_size)


def _check_copy(offsite: CatalogStore, name: str, written: Written) -> dict[str, Any]:
    """Read the copy back through its catalog entry: binding, every chunk with the
    off-site key, stored SHA-256 and size (`open_payload` checks them all: by the seal
    when the copy has one), and the plaintext equal to the source's."""
    started = time.monotonic()
    plain, size = crypto.BackgroundSha256(), 0
    with offsite.open_payload(name) as reader:
        while chunk := reader.read(READ_CHUNK):
            plain.update(chunk)
            size += len(chunk)
    if plain.hexdigest() != written.plain_sha256:
        raise OffsiteError(f"{name}: the off-site copy decrypts to other bytes than the "
                           "source (plaintext SHA-256 differs)")
    return {"name": "read back", "passed": True,
            "seconds": round(time.monotonic() - started, 3),
            "detail": f"stored SHA-256 and size as written ("
                      f"{'proven by its seal' if written.seal else 'hashed'}), every chunk "
                      f"authenticated with the off-site key, {size} plaintext bytes identical "
                      "to the source's"}


def _staged_copy(offsite: CatalogStore, pkey: str, staged: Any, key: bytes) -> Written | None:
    """The staged copy the source entry records, if it is in `offsite` (this store, this
    key) as it was written; None: copy the backup instead."""
    if not isinstance(staged, dict) or staged.get("key") != pkey or staged.get(
            "location") != offsite.objects.location(pkey) or staged.get(
            "keyId") != crypto.key_id(key):
        return None
    try:
        peek = offsite.objects.peek(pkey, 0)
    except FileNotFoundError:
        return None
    try:
        written = Written(int(staged["size"]), str(staged["sha256"]),
                          str(staged["seal"]) if staged.get("seal") else None,
                          str(staged["plainSha256"]), peek.etag, int(staged["chunkSize"]))
    except (KeyError, TypeError, ValueError):  # an entry edited by hand: copy instead
        return None
    return written if peek.size == written.size else None


def discard_staged(source: CatalogStore, offsite: CatalogStore, backup: Backup) -> None:
    """Remove the copy staged in `offsite` for a backup that failed its verification
    (never cataloged there: only a verified backup is kept twice)."""
    staged = source.entry(backup.id).get("offsiteStaged")
    pkey = naming.payload_key(backup.id)
    if not isinstance(staged, dict) or staged.get("location") != offsite.objects.location(
            pkey):
        return
    try:
        offsite.entry(backup.id)
    except CatalogError:  # not cataloged there: the staged object is ours to remove
        offsite.objects.delete(pkey)


def copy_offsite(source: CatalogStore, offsite: CatalogStore, backup: Backup, *,
                 actor: str) -> Backup:
    """Copy a verified base backup to `offsite`, check it there, return the copy (its
    `verified` says whether the check passed). Refuses an unverified backup: only what
    was proven usable is worth keeping twice."""
    if backup.verified is not True:
        raise OffsiteError(f"{backup.id} is not verified; only a verified backup is copied "
                           "off-site")
    if backup.meta.get("format") != "basebackup":
        raise OffsiteError(f"{backup.id} is a {backup.meta.get('format')} set: its off-site "
                           "copy is a backup into pgBackRest's off-site repository "
                           "(`copy_pgbackrest`)")
    fencing.check()
    started = time.monotonic()
    entry = source.entry(backup.id)
    staged = entry.pop("offsiteStaged", None)
    key = offsite.data_key()
    pkey = naming.payload_key(backup.id)
    written = _staged_copy(offsite, pkey, staged, key)
    how = "staged as it was taken" if written else "re-encrypted from the store"
    if written is None:
        written = _encrypt_copy(source, offsite, backup, key)
    obj = {"key": pkey, "size": written.size, "sha256": written.sha256, "etag": written.etag,
           **({"seal": written.seal} if written.seal else {})}
    copy = {**entry, "size": written.size, "objects": [obj],
            "encryption": {"algorithm": crypto.ALGORITHM,
                           "chunkSize": written.chunk_size,
                           "keyId": crypto.key_id(key),
                           "payloadFormat": crypto.FORMAT_BOUND},
            "copiedFrom": {"location": backup.location,
                           "sha256": (entry.get("objects") or [{}])[0].get("sha256")},
            "createdBy": actor, "createdAt": time.time(), "verifications": []}
    offsite.objects.put_bytes(naming.catalog_key(backup.id),
                              json.dumps(copy, indent=1, sort_keys=True).encode())
    seconds = time.monotonic() - started
    offsite.audit(actor=actor, action="backup-offsite",
                  detail=f"copied {backup.id} ({written.size} bytes, {how}, {seconds:.2f} "
                         f"s) to {offsite.objects.location(pkey)}")
    at, started = time.time(), time.monotonic()
    try:
        check = _check_copy(offsite, backup.id, written)
        summary, passed = f"passed: read back (off-site copy of {backup.location})", True
    except (PermanentError, OSError) as exc:
        check = {"name": "read back", "passed": False,
                 "seconds": round(time.monotonic() - started, 3), "detail": str(exc)[:1000]}
        summary, passed = f"read back failed: {exc}"[:1000], False
    return offsite.record_verification(
        backup.id, {"passed": passed, "at": at,
                    "durationS": round(time.monotonic() - started, 3),
                    "summary": summary, "checks": [check]}, actor=actor)


def offsite_type(offsite: CatalogStore, backup: Backup, source: PgBackRestSource
                 ) -> tuple[str, str]:
    """The type of `backup`'s off-site copy into `source.offsite_repo` ("full" or "diff")
    and why: a diff against the repository's newest full set when that full is younger
    than `offsiteFullEvery` and was proven there (its copy's check passed), and the newest
    off-site copy of the data set passed its check too; otherwise a full."""
    repo = source.offsite_repo
    try:
        info = json.loads(LocalHost().run(as_user(source.os_user, [
            source.pgbackrest, f"--config={source.config}", f"--stanza={source.stanza}",
            f"--repo={repo}", "--output=json", "info"])).out)
    except CommandError as exc:
        raise OffsiteError(f"pgbackrest info of repo{repo} failed: {exc}") from None
    fulls = [s for s in ((info[0].get("backup") if info else None) or [])
             if s.get("type") == "full"]
    if not fulls:
        return "full", f"repo{repo} holds no full set yet"
    label = fulls[-1]["label"]
    age = time.time() - float(fulls[-1]["timestamp"]["stop"])
    if age > source.offsite_full_every:
        return "full", (f"repo{repo}'s full set {label} is {age / 3600:.0f}h old "
                        f"(offsiteFullEvery {format_duration(source.offsite_full_every)})")
    copies = [c for c in offsite.list(dataset=backup.dataset)
              if (c.meta.get("pgbackrest") or {}).get("repo") == repo]
    if not any(c.verified is True and c.meta["pgbackrest"].get("label") == label
               for c in copies):
        return "full", f"repo{repo}'s full set {label} was never proven there"
    if copies[0].verified is not True:
        return "full", f"the last off-site copy {copies[0].id} failed its check"
    return "diff", f"a diff against repo{repo}'s full set {label}"


def copy_pgbackrest(offsite: CatalogStore, backup: Backup, source: PgBackRestSource, *,
                    actor: str) -> Backup:
    """Back the set up into `source.offsite_repo` (a diff or a full: `offsite_type`),
    verify it there (`pgbackrest verify`, whose text output is judged: it exits 0 on
    corruption; a diff passes only with its full) and register it, with the result, in
    the off-site store."""
    if backup.verified is not True:
        raise OffsiteError(f"{backup.id} is not verified; only a verified backup is copied "
                           "off-site")
    fencing.check()
    kind, why = offsite_type(offsite, backup, source)
    copy = register_pgbackrest(offsite, dataset=backup.dataset, kind=backup.kind,
                               actor=actor, config=source.config, stanza=source.stanza,
                               backup_type=kind, os_user=source.os_user,
                               pgbackrest=source.pgbackrest, repo=source.offsite_repo)
    at, started = time.time(), time.monotonic()
    result = LocalHost().run(as_user(source.os_user, [
        source.pgbackrest, f"--config={source.config}", f"--stanza={source.stanza}",
        f"--repo={source.offsite_repo}", "--output=text", "--verbose", "verify"]),
        timeout=6 * 3600, check=False)
    meta = copy.meta["pgbackrest"]
    labels = [meta["label"], *([meta["prior"]] if meta.get("prior") else [])]
    if result.rc == 0:
        parsed = parse_pgbackrest_verify(result.out)
        verdicts = [judge_pgbackrest(parsed, label) for label in labels]
        passed = all(ok for ok, _ in verdicts)
        detail = "; ".join(text for ok, text in verdicts if ok == passed)
    else:
        passed, detail = False, (f"pgbackrest verify exited {result.rc}: "
                                 f"{result.err.strip()[-500:]}")
    seconds = round(time.monotonic() - started, 3)
    return offsite.record_verification(copy.id, {
        "passed": passed, "at": at, "durationS": seconds,
        "summary": (f"passed: pgbackrest verify (repo{source.offsite_repo}, off-site copy "
                    f"of {backup.id}: {why})" if passed
                    else f"pgbackrest verify failed: {detail}"),
        "checks": [{"name": "pgbackrest verify", "passed": passed, "seconds": seconds,
                    "detail": detail[:1000]}]}, actor=actor)

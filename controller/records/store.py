"""The records store: write-once documents kept for the plan's retention (`spec.records`).

Owns where an archived run, drill verdict or incident record lives and that it stays as
written. Two kinds, one `RecordsStore` protocol (put, get, keys):

- **directory**: a file per key under `options.path` (a mounted volume), written to a
  temporary name, synced and linked into place — a reader never sees half a record, and
  `link` refuses an existing name, so a record is never overwritten. The file is made
  read-only; its SHA-256 is kept beside it (`<key>.sha256`), written before the record,
  so every record that can be seen has one.
- **s3**: an object per key; with `objectLock` (COMPLIANCE by default) each is put with
  Object Lock retention until `keep` from now, so the bucket refuses to delete or
  overwrite it before then — the store, not this controller, enforces the retention. The
  SHA-256 rides in the object's metadata.

Putting the same body again is a no-op (an archive retried after a crash); another body
under an existing key is refused (`RecordExists`). `get` checks the SHA-256 and raises
`RecordDamaged` naming the key when it differs; `get_json` also refuses a record that is
not JSON. A store that cannot be reached raises `RecordsError` naming the store and the
cause, never a credential. The layout of keys (`runs/<plan>/<run-id>.json|.md`,
`drills/<plan>/<finished-at>-<run-id>.json`, `incidents/<plan>/<run-id>.json|.md`) is
`controller.records.archive`'s.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from controller.plan_records import DirectoryRecordsOptions, RecordsSpec, S3RecordsOptions
from controller.secrets import Secrets, redact

CHECKSUM = ".sha256"
"""Suffix of a directory record's checksum file (never a key of its own)."""


class RecordsError(Exception):
    """The store cannot be reached, or refused a write; the message names the store."""


class RecordMissing(KeyError):
    """No record under the key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such record"


class RecordExists(RecordsError):
    """Another body is already kept under the key: a record is never overwritten."""


class RecordDamaged(RecordsError):
    """A record whose bytes no longer match its SHA-256, or that is not what was written."""


class RecordsStore(Protocol):
    @property
    def where(self) -> str:
        """The store, for messages: a directory or s3://bucket/prefix."""
        ...

    def put(self, key: str, body: bytes, *, content_type: str) -> None:
        """Write `body` under `key` once, retained for the plan's `keep`."""
        ...

    def get(self, key: str) -> bytes:
        """The record's bytes, checked against its SHA-256 (RecordMissing, RecordDamaged)."""
        ...

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key starting with `prefix`, sorted."""
        ...


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def check_key(key: str) -> str:
    """A relative path of plain parts: what both stores can hold and never escapes a root."""
    path = PurePosixPath(key)
    if (not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/"))
            or key.endswith(CHECKSUM) or path.name.startswith(".")):
        raise ValueError(f"records key {key!r} must be a relative path of plain parts, e.g. "
                         "'runs/web/web-failover-1.json'")
    return key


def _damaged(store: RecordsStore, key: str, why: str, hint: str = "") -> RecordDamaged:
    return RecordDamaged(f"archived record {key} in {store.where} is damaged: {why}; it "
                         "cannot be trusted as the record of what happened — restore it "
                         f"from a copy of the store{hint}")


def get_json(store: RecordsStore, key: str) -> dict[str, Any]:
    """A JSON record as a dict; RecordDamaged names the key when it is not one."""
    body = store.get(key)
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise _damaged(store, key, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _damaged(store, key, f"a JSON {type(doc).__name__}, not an object")
    return doc


class DirectoryStore:
    """Records as read-only files under a directory (module docstring)."""

    def __init__(self, options: DirectoryRecordsOptions):
        self.root = Path(options.path)

    @property
    def where(self) -> str:
        return f"directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, body: bytes, *, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._same(path, body)
                return
            # the checksum first: a record that can be seen always has one; a checksum
            # left alone by a crash belongs to no record and is replaced
            self._write(path.with_name(path.name + CHECKSUM), sha256(body).encode(),
                        link=False)
            self._write(path, body, link=True)
        except OSError as exc:
            raise RecordsError(f"cannot write record {key} to {self.where}: "
                               f"{exc.strerror or exc}") from None

    def _same(self, path: Path, body: bytes) -> None:
        """An existing record: the same bytes is done (a retry); other bytes are refused."""
        if path.read_bytes() != body:
            raise RecordExists(f"record {path.relative_to(self.root)} already exists in "
                               f"{self.where} with other content; a record is never "
                               "overwritten")

    def _write(self, path: Path, body: bytes, *, link: bool) -> None:
        """A synced, read-only temporary file moved to `path`: linked (refusing an
        existing name, so a record is written once) or renamed over it."""
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
        try:
            with open(tmp, "xb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.chmod(0o444)
            if not link:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:  # written meanwhile
                    self._same(path, body)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            raise RecordMissing(f"no record {key} in {self.where}") from None
        except OSError as exc:
            raise RecordsError(f"cannot read record {key} from {self.where}: "
                               f"{exc.strerror or exc}") from None
        try:
            want = path.with_name(path.name + CHECKSUM).read_text().strip()
        except FileNotFoundError:
            raise _damaged(self, key, f"its checksum file {path.name}{CHECKSUM} is "
                                      "missing") from None
        if sha256(body) != want:
            raise _damaged(self, key, f"its SHA-256 is {sha256(body)}, recorded {want}")
        return body

    def keys(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if (path.is_file() and not path.name.startswith(".")
                    and not key.endswith(CHECKSUM) and key.startswith(prefix)):
                yield key


class S3Store:
    """Records as objects, Object-Locked for `keep` (module docstring)."""

    META = "sha256"

    def __init__(self, options: S3RecordsOptions, *, keep: float,
                 secrets: Secrets | None = None):
        import boto3
        from botocore.config import Config

        self.options, self.keep = options, keep
        creds: dict[str, str] = {}
        if options.access_key_id is not None and options.secret_access_key is not None:
            reveal = (secrets or Secrets()).reveal
            creds = {"aws_access_key_id": reveal(options.access_key_id).strip(),
                     "aws_secret_access_key": reveal(options.secret_access_key).strip()}
        # few, short attempts: an unreachable store is retried on a later tick, so a
        # tick of the controller never waits long on it
        self.client: Any = boto3.client(
            "s3", endpoint_url=options.endpoint_url, region_name=options.region,
            verify=options.ca_bundle if options.ca_bundle else None,
            config=Config(retries={"max_attempts": 2, "mode": "standard"},
                          connect_timeout=5, read_timeout=30),
            **creds)
        self.prefix = options.prefix.strip("/") + "/" if options.prefix.strip("/") else ""

    @property
    def where(self) -> str:
        return f"s3://{self.options.bucket}/{self.prefix}"

    def _failed(self, doing: str, key: str, exc: Exception) -> RecordsError:
        from botocore.exceptions import ClientError

        said = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            said = f"{error.get('Code')}: {error.get('Message')}"
            if ("objectlock" in said.lower().replace(" ", "")
                    and self.options.object_lock is not None):
                said += (" (create the bucket with Object Lock enabled, or set "
                         "records.store.options.objectLock: null for a store without it)")
        return RecordsError(redact(f"cannot {doing} record {key} in {self.where}: {said}"))

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.options.bucket,
                                                Key=self.prefix + key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def put(self, key: str, body: bytes, *, content_type: str) -> None:
        check_key(key)
        digest = sha256(body)
        try:
            head = self._head(key)
            if head is not None:
                if head.get("Metadata", {}).get(self.META) == digest:
                    return  # archived before: a retry after a crash
                raise RecordExists(f"record {key} already exists in {self.where} with other "
                                   "content; a record is never overwritten")
            lock: dict[str, Any] = {}
            if self.options.object_lock is not None:
                until = (datetime.datetime.now(datetime.UTC)
                         + datetime.timedelta(seconds=self.keep))
                lock = {"ObjectLockMode": self.options.object_lock.value,
                        "ObjectLockRetainUntilDate": until}
            self.client.put_object(Bucket=self.options.bucket, Key=self.prefix + key,
                                   Body=body, ContentType=content_type,
                                   Metadata={self.META: digest}, **lock)
        except RecordsError:
            raise
        except Exception as exc:
            raise self._failed("write", key, exc) from None

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        check_key(key)
        try:
            got = self.client.get_object(Bucket=self.options.bucket, Key=self.prefix + key)
            body = bytes(got["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise RecordMissing(f"no record {key} in {self.where}") from None
            raise self._failed("read", key, exc) from None
        except Exception as exc:
            raise self._failed("read", key, exc) from None
        want = got.get("Metadata", {}).get(self.META)
        hint = (" (Object Lock keeps the version first written: `aws s3api "
                f"list-object-versions --bucket {self.options.bucket} --prefix "
                f"{self.prefix}{key}`)")
        if want is None:
            raise _damaged(self, key, "it carries no SHA-256 (not written by this "
                                      "controller)", hint)
        if sha256(body) != want:
            raise _damaged(self, key, f"its SHA-256 is {sha256(body)}, recorded {want}", hint)
        return body

    def keys(self, prefix: str) -> Iterator[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.options.bucket, Prefix=self.prefix + prefix)
            found = [obj["Key"][len(self.prefix):] for page in pages
                     for obj in page.get("Contents", [])]
        except Exception as exc:
            raise self._failed("list", prefix + "*", exc) from None
        yield from sorted(found)


def open_store(spec: RecordsSpec, *, secrets: Secrets | None = None) -> RecordsStore:
    """The store `spec.store` names; S3 credentials are read through `secrets`."""
    if spec.store.kind == "directory":
        return DirectoryStore(spec.store.directory())
    return S3Store(spec.store.s3(), keep=spec.keep, secrets=secrets)

"""The sandbox's backup stores: dc-a's S3 store, the off-site copy, and the backups in them.

Owns what a restore drill finds in storage before it starts, so the sandbox itself only
wires servers together:

- **dc-a's store**: moto's S3 server (`servers.moto`), bucket `dc-a-backups`, its own S3
  keys and AES-256-GCM encryption key, holding the orders data set's base backups taken
  from dc-a's primary and verified (checksums, decrypt, pg_verifybackup, test restore,
  the validation queries) before the drill starts;
- **off-site store**: a second moto S3 endpoint (bucket `dc-b-offsite`, its own S3 keys
  and encryption key) holding a re-encrypted, read-back copy of every verified backup
  (`backups.offsite`), so a drill can lose dc-a's store and restore from the copy
  (moto keeps one state per process: the endpoints differ, the buckets keep them apart).

Every key is a file (`files`, written by the sandbox) referenced by `fromFile`; the stores
are built once, on first use, with the sandbox's audit hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from controller.drill.servers.base import ServerError
from controller.drill.servers.moto import MotoServer
from controller.drill.servers.postgres import PostgresServer
from controller.model import Backup

DATASET = "orders"
BUCKET = "dc-a-backups"
OFFSITE_BUCKET = "dc-b-offsite"


def validation(rows: int) -> list[dict[str, Any]]:
    """The checks a restored orders database must pass: consistency, integrity, business."""
    revenue = sum(g % 97 + 1 for g in range(1, rows + 1))
    return [
        {"name": "consistency: orders row count", "sql": "SELECT count(*) FROM orders",
         "expect": str(rows)},
        {"name": "integrity: revenue matches the source",
         "sql": "SELECT sum(amount)::bigint FROM orders", "expect": str(revenue)},
        {"name": "business: newest order readable",
         "sql": "SELECT id FROM orders ORDER BY id DESC LIMIT 1", "expect": str(rows)},
    ]


class Stores:
    """dc-a's backup store and its off-site copy: `start(scratch)`, then `take_backups`."""

    def __init__(self, files: dict[str, Path], *, rows: int,
                 audit: Callable[..., None] | None = None):
        self.files, self.rows, self.audit = files, rows, audit
        self._scratch: Path | None = None
        self.moto: MotoServer | None = None
        self.offsite_moto: MotoServer | None = None
        self.backups: list[Backup] = []  # newest first
        self.offsite_copies: list[Backup] = []  # newest first
        self._store: Any = None
        self._offsite_store: Any = None

    def start(self, scratch: Path) -> None:
        """Start both S3 endpoints and make their buckets; `scratch` is for restores."""
        self._scratch = scratch
        self.moto = MotoServer()
        self.moto.start()
        self.moto.client("s3").create_bucket(Bucket=BUCKET)
        self.offsite_moto = MotoServer()
        self.offsite_moto.start()
        self.offsite_moto.client("s3").create_bucket(Bucket=OFFSITE_BUCKET)

    def store_options(self) -> dict[str, Any]:
        assert self.moto is not None
        return {"bucket": BUCKET, "prefix": f"dc-a/{DATASET}", "endpointUrl": self.moto.endpoint,
                "accessKeyId": {"fromFile": str(self.files["s3-access-key-id"])},
                "secretAccessKey": {"fromFile": str(self.files["s3-secret-access-key"])},
                "encryptionKey": {"fromFile": str(self.files["backup-key"])}}

    def offsite_store_options(self) -> dict[str, Any]:
        """The off-site store: another endpoint and bucket, with keys of its own."""
        assert self.offsite_moto is not None
        return {"bucket": OFFSITE_BUCKET, "prefix": f"dc-b/{DATASET}",
                "endpointUrl": self.offsite_moto.endpoint,
                "accessKeyId": {"fromFile": str(self.files["offsite-s3-access-key-id"])},
                "secretAccessKey": {"fromFile": str(
                    self.files["offsite-s3-secret-access-key"])},
                "encryptionKey": {"fromFile": str(self.files["offsite-backup-key"])}}

    def store(self) -> Any:
        if self._store is None:
            self._store = self._s3_store(self.store_options())
        return self._store

    def offsite_store(self) -> Any:
        if self._offsite_store is None:
            self._offsite_store = self._s3_store(self.offsite_store_options())
        return self._offsite_store

    def _s3_store(self, options: dict[str, Any]) -> Any:
        from controller.backups.s3 import S3BackupStore
        from controller.secrets import Secrets

        return S3BackupStore(S3BackupStore.Options.model_validate(options), secrets=Secrets(),
                             audit=self.audit)

    def verifier(self) -> Any:
        from controller.backups.verify import CatalogVerifier
        from controller.secrets import Secrets

        return CatalogVerifier(CatalogVerifier.Options.model_validate({
            "store": {"kind": "s3", "options": self.store_options()},
            "scratch": str(self.scratch()), "validation": validation(self.rows),
            "actor": "sandbox:verify"}), secrets=Secrets(), audit=self.audit,
            store=self.store())

    def scratch(self) -> Path:
        path = self._scratch
        assert path is not None, "the stores are not started"
        path.mkdir(exist_ok=True)
        path.chmod(0o755)
        return path

    def take_backups(self, db: PostgresServer, count: int) -> None:
        """`count` daily base backups of `db`, each verified, then copied off-site."""
        from controller.backups.take import take_basebackup

        store, verifier = self.store(), self.verifier()
        taken: list[Backup] = []
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-verify") as pool:
            checks = []
            for _ in range(count):
                while taken and int(time.time()) <= int(taken[-1].taken_at):
                    time.sleep(0.02)  # backup names carry whole seconds: one per second
                taken.append(take_basebackup(
                    store, dataset=DATASET, kind="daily", actor="sandbox:nightly",
                    host=str(db.sock), port=db.port, scratch=str(self.scratch())))
                checks.append(pool.submit(verifier.verify, backup=taken[-1]))
            results = [c.result() for c in checks]
        failed = [r for r in results if not r["passed"]]
        if failed:
            raise ServerError("a fresh backup failed verification: "
                              + "; ".join(r["summary"] for r in failed))
        self.backups = store.list(dataset=DATASET)
        self._copy_offsite()

    def _copy_offsite(self) -> None:
        """Copy every verified backup to the off-site store and read it back there."""
        from controller.backups.offsite import copy_offsite

        store, offsite = self.store(), self.offsite_store()
        for backup in self.backups:
            copy = copy_offsite(store, offsite, backup, actor="sandbox:offsite")
            if not copy.verified:
                raise ServerError(f"the off-site copy of {backup.id} failed its check: "
                                  f"{copy.verification}")
        self.offsite_copies = offsite.list(dataset=DATASET)

    def manifest(self) -> dict[str, Any]:
        return {"backups": [{"id": b.id, "kind": b.kind, "verified": b.verified,
                             "verification": b.verification} for b in self.backups],
                "offsiteCopies": [{"id": b.id, "location": b.location, "verified": b.verified}
                                  for b in self.offsite_copies]}

    def describe(self) -> Iterator[str]:
        for b in self.backups:
            yield f"  {'backups':<8} {b.id:<22} {'verified' if b.verified else 'NOT verified'}"
        for b in self.offsite_copies:
            yield f"  {'off-site':<8} {b.id:<22} {'verified' if b.verified else 'NOT verified'}" \
                  f" {b.location}"

    def services(self) -> list[tuple[str, int, str]]:
        """(service, port, detail) of each S3 endpoint that runs, for the sandbox's table."""
        rows = []
        if self.moto is not None:
            rows.append(("moto S3", self.moto.port, f"{self.moto.endpoint} bucket {BUCKET}, "
                         "AES-256-GCM catalog"))
        if self.offsite_moto is not None:
            rows.append(("moto S3 (off-site)", self.offsite_moto.port,
                         f"{self.offsite_moto.endpoint} bucket {OFFSITE_BUCKET}, own key, "
                         "copies read back"))
        return rows

    def servers(self) -> list[tuple[str, MotoServer | None]]:
        """What the sandbox's `stop()` stops, named for the teardown's errors."""
        return [("s3", self.moto), ("s3 off-site", self.offsite_moto)]

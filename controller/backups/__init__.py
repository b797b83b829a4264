"""Backups: stores that list backups, verifiers that prove them usable, restorers.

Only a backup whose verification passed is restorable; `choose` (in `selection`) prefers
continuous, falls back to daily, then to an older verified one, and says which and why.
"""

from __future__ import annotations

from typing import Protocol

from controller.model import Backup, Evidence, Target

KINDS_BY_ROLE: dict[str, dict[str, str]] = {
    "store": {
        "memory": "controller.testing:FakeBackupStore",
        "s3": "controller.backups.s3:S3BackupStore",
        "filesystem": "controller.backups.filesystem:FilesystemBackupStore",
    },
    "restorer": {
        "memory": "controller.testing:FakeRestorer",
        "basebackup": "controller.backups.restore:BaseBackupRestorer",
        "pgbackrest": "controller.backups.restore:PgBackRestRestorer",
    },
    "verifier": {"catalog": "controller.backups.verify:CatalogVerifier"},
}


class BackupStore(Protocol):
    def list(self, *, dataset: str) -> list[Backup]:
        """Newest first, each with its verification state."""
        ...


class Restorer(Protocol):
    def restore(self, *, backup: Backup, into: Target) -> Evidence: ...


class Verifier(Protocol):
    def verify(self, *, backup: Backup) -> Evidence:
        """Run the checks, write the result back to the catalog, return it as evidence."""
        ...

"""Backups: stores that list backups, verifiers that prove them usable, restorers.

Only a backup whose verification passed is restorable; `choose` (in `selection`) prefers
continuous, falls back to daily, then to an older verified one, and says which and why.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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


@runtime_checkable
class BackupStore(Protocol):
    def list(self, *, dataset: str) -> list[Backup]:
        """Newest first, each with its verification state."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None


@runtime_checkable
class Restorer(Protocol):
    def restore(self, *, backup: Backup, into: Target) -> Evidence:
        """Restore a verified backup (refused otherwise, nothing written) into an empty
        target (refused when it holds data) and return the evidence: which backup, where,
        the RPO met, each phase, the validation queries' results."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None


@runtime_checkable
class Verifier(Protocol):
    def verify(self, *, backup: Backup, actor: str | None = None) -> Evidence:
        """Run the checks, write the result back to the catalog, return it as evidence
        (`actor`: who asked, for the audit; default the verifier's configured actor)."""
        ...

    def verify_unverified(self, *, dataset: str, actor: str | None = None) -> list[Evidence]:
        """Verify every backup of `dataset` never verified yet (the scheduled job); one
        that cannot be verified is reported in its evidence and does not stop the others."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None

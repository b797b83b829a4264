"""Backups: stores that list backups, verifiers that prove them usable, restorers.

Only a backup whose verification passed is restorable; `choose` (in `selection`) prefers
continuous, falls back to daily, then to an older verified one, and says which and why.
A backup found damaged at restore time (`DamagedBackup`: its integrity pass failed, its
payload does not authenticate, is another backup's, or is not the one cataloged) is
replaced by the next one in that order; no other failure is (see `steps.restore`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from controller.model import Backup, Evidence, PermanentError, Target

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


class DamagedBackup(PermanentError):
    """This backup cannot be restored as it is stored (missing, changed since it was
    cataloged, unauthenticated, another backup's payload): the restore step falls back to
    the next verified backup on this error, and only on it. A problem of configuration
    (a wrong key), of the target host or of validation is never one."""


@runtime_checkable
class BackupStore(Protocol):
    def list(self, *, dataset: str) -> list[Backup]:
        """Newest first, each with its verification state."""
        ...

    def check_integrity(self, backup: Backup) -> str:
        """Right before a restore, the cheap pass (a payload's first bytes at most): the
        stored objects exist with the size (and ETag, where the store has them) last
        verified, and a payload is bound to its entry; returns what it found, raises
        DamagedBackup otherwise."""
        ...

    def record_damage(self, backup: Backup, *, reason: str, actor: str) -> str:
        """Write a backup found damaged at restore time back to the store as a failed
        verification (the reason, the time, who): from then on `list` says it is not
        verified, so selection, readiness and the next restore skip it. Returns what was
        recorded and where, for the restore's evidence; raises when the store cannot be
        written (e.g. read-only credentials for restores)."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None


@runtime_checkable
class Restorer(Protocol):
    def restore(self, *, backup: Backup, into: Target) -> Evidence:
        """Restore a verified backup (refused otherwise, nothing written) into the target and
        return the evidence: which backup, where, the RPO met, each phase, the validation
        queries' results. A target holding data is refused unless its options allow
        `overwrite`; the old data is then replaced only once the restored node passed
        validation. A retry of the same backup into the same target answers
        `alreadyRestored` instead of restoring twice."""
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

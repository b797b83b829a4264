"""One backup job: take a data set's backup, verify it, copy it off-site, prune.

Owns the order of a backup's life, for one `spec.backups[]` set, as `failoverctl backup`
runs it (by hand, or from the plan's CronJob with `--due`):
1. `preflight`: both stores' encryption keys usable; a pgBackRest repository encrypted and,
   for a continuous set, `archive-push` proven (`take.check_pgbackrest`);
2. `take`: `pg_basebackup` or `pgbackrest backup`, named `<date>_<dataset>_<kind>`; a
   base backup's off-site copy is written in the same pass, staged: in no catalog yet;
3. `verify`: the set's verifier, right after the backup. A verification that cannot
   complete (bad input, an error) is recorded as FAILED on the new backup, so nothing
   unproven is left looking restorable (restores only choose verified backups);
4. `offsite`: a verified base backup's staged copy (or, when staging failed, the backup
   re-encrypted into the off-site store) cataloged and checked there
   (`offsite.copy_offsite`), or a pgBackRest set backed up into its off-site
   repository and verified there (`offsite.copy_pgbackrest`);
5. `prune`: the retention rule on both stores (`retention.prune`), only after a verified
   backup and its checked copy exist, so a failing job never shrinks what is kept; and the
   payloads no catalog names, past `strayAfter` (`retention.prune_strays`: the copy a job
   staged before it died).
A phase that fails stops the later ones; `Outcome` says which phase, why, and what exists.

`run_test_restore` is the schedule's other job (`backup --due`, when
`schedule.due_test_restore` says so): the set's verifier verifies the newest verified
backup again, its `test-restore` check included, and records the result on the entry,
which is where readiness reads the last passed test restore; a backup that fails it is
marked failed, like any verification.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from controller import fencing
from controller.backups import Verifier, retention
from controller.backups.catalog import CatalogError, CatalogStore
from controller.backups.offsite import copy_offsite, copy_pgbackrest, discard_staged
from controller.backups.take import check_pgbackrest, register_pgbackrest, take_basebackup
from controller.model import Backup, PermanentError
from controller.plan import BackupSet, format_duration
from controller.secrets import redact


class Phase(Enum):
    PREFLIGHT = "preflight"
    TAKE = "take"
    VERIFY = "verify"
    OFFSITE = "offsite"
    PRUNE = "prune"


Progress = Callable[[Phase, str], None]


@dataclass
class Outcome:
    dataset: str
    backup: str | None = None
    verified: bool = False
    verification: str = ""
    offsite: str | None = None
    pruned: list[str] = field(default_factory=list)
    failed: Phase | None = None
    error: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def sentence(self) -> str:
        if self.failed is None:
            return (f"{self.backup} verified ({self.verification}); off-site {self.offsite}; "
                    f"{len(self.pruned)} pruned")
        return f"{self.backup or 'no backup'}: {self.failed.value} failed: {self.error}"

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "backup": self.backup, "verified": self.verified,
                "verification": self.verification, "offsite": self.offsite,
                "pruned": self.pruned, "ok": self.ok,
                "failedPhase": None if self.failed is None else self.failed.value,
                "error": self.error, "seconds": self.seconds}


@dataclass
class ScheduledTestRestore:
    """What a scheduled test restore of `backup` found (`error` empty: it passed)."""

    dataset: str
    backup: str
    why: str  # why it was due
    summary: str = ""
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    def sentence(self) -> str:
        if self.ok:
            return f"test restore of {self.backup} passed ({self.summary})"
        return f"test restore of {self.backup} FAILED: {self.error}"

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "backup": self.backup, "due": self.why,
                "ok": self.ok, "summary": self.summary, "error": self.error,
                "seconds": self.seconds}


def run_test_restore(spec: BackupSet, backup: Backup, why: str, *, verifier: Verifier,
                     actor: str) -> ScheduledTestRestore:
    """Verify `backup` again with its test restore; a verifier that ran none (its
    `testRestore: false`) fails the job, since readiness would stay red."""
    out = ScheduledTestRestore(spec.dataset, backup.id, why)
    started = time.monotonic()
    try:
        ev = verifier.verify(backup=backup, actor=actor)
    except (fencing.Cancelled, fencing.LostLease, fencing.StaleToken):
        raise
    except Exception as exc:
        out.error = redact(f"the verification could not complete: {type(exc).__name__}: "
                           f"{exc}")[:1000]
    else:
        out.summary = str(ev["summary"])
        tested = any(c.get("name") == "test-restore" and c.get("passed") is True
                     for c in ev.get("checks") or [])
        if ev["passed"] is not True:
            out.error = out.summary
        elif not tested:
            out.error = (f"verifier {spec.verifier} ran no test restore: set `testRestore: "
                         "true` on it (readiness wants one every "
                         f"{format_duration(spec.test_restore_every)})")
    out.seconds = round(time.monotonic() - started, 3)
    return out


class BackupJob:
    """The cycle of one set over its stores and verifier (built by the caller)."""

    def __init__(self, spec: BackupSet, *, store: CatalogStore, offsite: CatalogStore,
                 verifier: Verifier, actor: str, progress: Progress | None = None):
        self.spec, self.store, self.offsite, self.verifier = spec, store, offsite, verifier
        self.actor = actor
        self.progress = progress or (lambda phase, text: None)
        self._taken: Backup | None = None

    def run(self) -> Outcome:
        out = Outcome(self.spec.dataset)
        phases: list[tuple[Phase, Callable[[Outcome], str]]] = [
            (Phase.PREFLIGHT, self._preflight), (Phase.TAKE, self._take),
            (Phase.VERIFY, self._verify), (Phase.OFFSITE, self._offsite),
            (Phase.PRUNE, self._prune)]
        for phase, fn in phases:
            started = time.monotonic()
            self.progress(phase, "started")
            try:
                detail = fn(out)
            except (fencing.Cancelled, fencing.LostLease, fencing.StaleToken):
                raise
            except Exception as exc:
                out.failed = phase
                out.error = redact(str(exc) if isinstance(exc, PermanentError | CatalogError)
                                   else f"{type(exc).__name__}: {exc}")[:1000]
            out.seconds[phase.value] = round(time.monotonic() - started, 3)
            if out.failed is not None:
                self.progress(phase, f"FAILED: {out.error}")
                break
            self.progress(phase, detail)
        return out

    # --- phases ------------------------------------------------------------------------------

    def _preflight(self, out: Outcome) -> str:
        self.store.check_key()
        self.offsite.check_key()
        pgb = self.spec.source.pgbackrest
        if pgb is None:
            return "encryption keys of both stores usable"
        return check_pgbackrest(config=pgb.config, stanza=pgb.stanza,
                                archiving=self.spec.kind == "continuous",
                                os_user=pgb.os_user, pgbackrest=pgb.pgbackrest)

    def _take(self, out: Outcome) -> str:
        fencing.check()
        src, ds, kind = self.spec.source, self.spec.dataset, self.spec.kind
        backup: Backup
        if src.basebackup is not None:
            bb = src.basebackup
            backup = take_basebackup(self.store, dataset=ds, kind=kind, actor=self.actor,
                                     host=bb.host, port=bb.port, user=bb.user, fmt=bb.format,
                                     scratch=bb.scratch, pg_bin=bb.pg_bin,
                                     os_user=bb.os_user, stage_in=self.offsite)
        else:
            assert src.pgbackrest is not None  # BackupSource holds exactly one
            pgb = src.pgbackrest
            backup = register_pgbackrest(self.store, dataset=ds, kind=kind, actor=self.actor,
                                         config=pgb.config, stanza=pgb.stanza,
                                         backup_type=pgb.type, os_user=pgb.os_user,
                                         pgbackrest=pgb.pgbackrest)
        out.backup = backup.id
        self._taken = backup
        return f"{backup.id} ({backup.size} bytes) at {backup.location}"

    def _verify(self, out: Outcome) -> str:
        backup = self._backup()
        try:
            ev = self.verifier.verify(backup=backup, actor=self.actor)
            passed, summary = ev["passed"] is True, str(ev["summary"])
            if not passed and ev.get("verified") is not False:
                # bad input: the verifier recorded nothing; this backup must not stay
                # looking merely "unverified"
                self._record_failed(backup, summary)
        except (fencing.Cancelled, fencing.LostLease, fencing.StaleToken):
            self._record_failed(backup, "verification cancelled")
            discard_staged(self.store, self.offsite, backup)
            raise
        except Exception as exc:
            summary = redact(f"verification could not complete: {type(exc).__name__}: {exc}")
            self._record_failed(backup, summary)
            passed = False
        out.verified, out.verification = passed, summary
        if not passed:
            discard_staged(self.store, self.offsite, backup)
            raise PermanentError(f"{backup.id} failed verification and is never restored: "
                                 f"{summary}")
        self._taken = self.store.to_backup(self.store.entry(backup.id))  # as recorded
        return summary

    def _record_failed(self, backup: Backup, summary: str) -> None:
        self.store.record_verification(backup.id, {
            "passed": False, "at": time.time(), "durationS": 0.0,
            "summary": summary[:1000], "checks": []}, actor=self.actor)

    def _backup(self) -> Backup:
        assert self._taken is not None, "the take phase runs first"
        return self._taken

    def _offsite(self, out: Outcome) -> str:
        backup, pgb = self._backup(), self.spec.source.pgbackrest
        copy = (copy_offsite(self.store, self.offsite, backup, actor=self.actor)
                if pgb is None else
                copy_pgbackrest(self.offsite, backup, pgb, actor=self.actor))
        if copy.verified is not True:
            raise PermanentError(f"off-site copy of {backup.id} failed its check: "
                                 f"{copy.verification}")
        out.offsite = copy.location
        return f"copied and checked at {copy.location}"

    def _prune(self, out: Outcome) -> str:
        rule, ds = self.spec.retention, self.spec.dataset
        removed = [p for store in (self.store, self.offsite)
                   for p in retention.prune(store, dataset=ds, rule=rule, actor=self.actor)]
        out.pruned = [f"{p.backup.location}: {p.reason}" for p in removed] + [
            stray for store in (self.store, self.offsite)
            for stray in retention.prune_strays(store, dataset=ds, rule=rule,
                                                actor=self.actor)]
        return f"{len(out.pruned)} pruned" + "".join(f"\n  - {p}" for p in out.pruned)

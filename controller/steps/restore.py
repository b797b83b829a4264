"""The `restore` step: restore the newest verified backup of a data set onto the target.

Owns the restore step's params, its preview (the backup it would choose, how old it is, its
verification and the RPO that would result against the step's budget: read-only, the same
choice `apply` makes), its apply and its readiness checks. Apply chooses the backup
(`selection.choose`), runs the store's cheap integrity pass on it (objects there, size,
ETag and binding as cataloged) and hands it to the restorer; when that backup turns out
damaged (`DamagedBackup`: the integrity pass failed, or the restore found its payload
unauthenticated, another backup's or not the one cataloged) it restores the next
verified backup in the plan's order (continuous, daily, older), each attempt fenced by
the restorer, and the evidence says which failed, why, and the RPO that resulted. The
damaged backup is written back to its store's catalog as a failed verification
(`BackupStore.record_damage`), so selection, readiness, the verifier and the next restore
no longer count it as verified; the evidence says where it was marked (or why it could
not be: the restore goes on, a backup's damage is no reason to stop restoring). Any
other failure (the host, validation, a cancel) is the step's failure: no fallback, since
another backup would fail the same way or must not run at all. Readiness: the newest
verified backup is within the step's RPO budget (`params.rpo`, default 24h), and a remote
target answers over SSH with its pinned host key and has the PostgreSQL binaries the
restore runs. Not revertible: a restore writes a new database. An attempt that landed (its
answer lost, or the controller died during it) is never restored twice: the restorers
recognise their own finished work at the target and answer `alreadyRestored`, and refuse
a target holding other data unless the plan allows `overwrite`.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import Field

from controller import metrics
from controller.backups import BackupStore, DamagedBackup
from controller.backups.naming import iso
from controller.backups.schedule import human_age
from controller.backups.selection import NoRestorableBackup, choose
from controller.model import Backup, Evidence, Target
from controller.plan import Duration, FailoverPlan, PlanSpec, Step, Strict, format_duration
from controller.secrets import redact
from controller.steps import (
    Change,
    CheckContext,
    Readiness,
    StepContext,
    StepKind,
    backend_of,
    seconds,
)

if TYPE_CHECKING:
    from controller.backups.hosts import Host
    from controller.backups.node import TargetOptions

log = logging.getLogger(__name__)
DEFAULT_RPO = 24 * 3600.0


# the phases of a restore, in the order a report lists them
PHASES = ["prepare", "fetch", "extract", "verify", "swap", "start", "promote", "validate",
          "commit"]


class RestoreInto(Strict):
    host: str | None = None
    path: str
    options: dict[str, Any] = Field(default_factory=dict)

    def target(self) -> Target:
        return Target(host=self.host, path=self.path, options=self.options)


class RestoreParams(Strict):
    store: str
    dataset: str = Field(min_length=1)
    into: RestoreInto
    rpo: Duration | None = None


@runtime_checkable
class RemoteTargets(Protocol):
    """A restorer that reaches its targets over SSH (the real restorers; not the fake)."""

    def host(self, into: Target, opts: TargetOptions) -> Host: ...


class Restore(StepKind[RestoreParams]):
    action = "restore"
    Params = RestoreParams
    role = "restorer"

    def check(self, step: Step, spec: PlanSpec) -> None:
        p = self.args(step)
        if not any(b.name == p.store and b.role == "store" for b in spec.backends):
            raise ValueError(f"params.store: no store backend named {p.store!r} in "
                             "spec.backends")
        if spec.validation.require_data_check and not _data_checked(p):
            raise ValueError(f"params.into.options.validation: {NO_DATA_CHECK}; add a query "
                             "(spec.validation.requireDataCheck is true)")

    def warnings(self, step: Step, spec: PlanSpec | None = None) -> list[str]:
        if _data_checked(self.args(step)):
            return []
        return [f"params.into.options.validation: {NO_DATA_CHECK}; add a query, or set "
                "spec.validation.requireDataCheck to refuse such plans"]

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        p = self.args(step)
        return (f"restore {p.dataset} from {p.store} (newest verified; continuous first) "
                f"via {step.backend}")

    def plan(self, step: Step, ctx: StepContext) -> Change:
        """The backup `apply` would restore now, its age and verification, and the RPO
        that would result against the step's budget; or that there is none to restore.
        Reads the store's listing only."""
        p = self.args(step)
        try:
            backup, why = choose(ctx.backends.store(p.store).list(dataset=p.dataset))
        except NoRestorableBackup as exc:
            return Change(summary=f"nothing to restore: {exc}")
        age, rpo = time.time() - backup.taken_at, _budget(p)
        verdict = "within" if age <= rpo else "OVER"
        return Change(summary=f"{why}; resulting RPO {human_age(age)} ({verdict} the "
                              f"{format_duration(rpo)} budget)")

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        """Nothing to journal before a restore: it is not revertible, and `apply` makes
        the choice itself (the preview's listing is not read twice)."""
        return {}

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        p = self.args(step)
        store = ctx.backends.store(p.store)
        restorer = ctx.backends.restorer(backend_of(step))
        listed = store.list(dataset=p.dataset)
        failed: list[Evidence] = []
        while True:  # choose says which are left; none left ends the step (NoRestorableBackup)
            backup, why = choose(listed, failed={f["backup"]: f["why"] for f in failed})
            try:
                integrity = store.check_integrity(backup)
                evidence = dict(restorer.restore(backup=backup, into=p.into.target()))
                break
            except DamagedBackup as exc:
                log.warning("restore of %s: backup %s is damaged, trying the next verified "
                            "one: %s", p.dataset, backup.id, exc)
                failed.append({"backup": backup.id, "kind": backup.kind,
                               "takenAt": iso(backup.taken_at), "why": str(exc),
                               "catalog": _mark_damaged(store, backup, str(exc),
                                                        actor=f"run {ctx.run_id}")})
        out: Evidence = {"chosen": backup.id, "kind": backup.kind, "why": why,
                         "integrity": integrity}
        if failed:
            out["fellBack"] = failed
        return {**out, **evidence}

    def readiness(self, step: Step, ctx: CheckContext) -> list[Readiness]:
        p = self.args(step)
        checks: list[Readiness] = [("backup within RPO", partial(
            _fresh_backup, ctx, step.name, p.store, p.dataset, _budget(p)))]
        restorer = ctx.backends.restorer(backend_of(step))
        if p.into.host and isinstance(restorer, RemoteTargets):
            checks.append(("restore host", partial(_restore_host, restorer, p.into.target())))
        return checks

    def facts(self, evidence: Evidence) -> list[str]:
        if "chosen" not in evidence:
            return []
        out = [f"backup `{f['backup']}` ({f['kind']}, taken {f['takenAt']}) is damaged, "
               f"not restored: {f['why']}; catalog: {f['catalog']}"
               for f in evidence.get("fellBack", [])]
        out.append(f"backup chosen: `{evidence['chosen']}` — {evidence.get('why')}")
        if "integrity" in evidence:
            out.append(f"integrity before the restore: {evidence['integrity']}")
        if "phases" in evidence:
            phases = sorted(evidence["phases"].items(), key=lambda kv: (
                PHASES.index(kv[0]) if kv[0] in PHASES else len(PHASES), kv[0]))
            out.append("phases: " + ", ".join(f"{k} {seconds(v)}" for k, v in phases)
                       + f"; {evidence.get('bytes', '-')} bytes onto "
                       f"{evidence.get('host')}:{evidence.get('path')}")
        out += [f"validation {q['name']}: {q['value']} "
                f"({'passed' if q['passed'] else 'FAILED ' + q['detail']})"
                for q in evidence.get("validation", [])]
        if "rpoSeconds" in evidence:
            fell = " (after falling back)" if evidence.get("fellBack") else ""
            out.append(f"data as of {evidence.get('dataAsOf')}: RPO "
                       f"{seconds(evidence['rpoSeconds'])}{fell}, budget "
                       f"{seconds(evidence.get('rpoBudgetSeconds'))}")
        return out


KIND = Restore()
NO_DATA_CHECK = "no validation query: the restored data is never checked"


def _data_checked(p: RestoreParams) -> bool:
    return bool(p.into.options.get("validation"))


def _budget(p: RestoreParams) -> float:
    return DEFAULT_RPO if p.rpo is None else p.rpo


def _mark_damaged(store: BackupStore, backup: Backup, reason: str, *, actor: str) -> str:
    """Write a damaged backup back to the store's catalog; what came of it, for the
    evidence. A store that cannot be written (e.g. read-only credentials for restores)
    does not stop the restore: the evidence and the log say the entry still looks
    verified."""
    try:
        return store.record_damage(backup, reason=reason, actor=actor)
    except Exception as exc:
        problem = redact(f"{type(exc).__name__}: {exc}")
        log.error("could not mark backup %s damaged in its catalog: %s", backup.id, problem)
        return (f"NOT marked ({problem}): the catalog still says it is verified, so the "
                "next restore tries it first again")


def _fresh_backup(ctx: CheckContext, step: str, store: str, dataset: str, rpo: float) -> str:
    backups = ctx.backends.store(store).list(dataset=dataset)
    verified = [b for b in backups if b.verified is True]
    newest = max(verified, key=lambda b: b.taken_at, default=None)
    metrics.backup_checked(ctx.plan.name, step, dataset, rpo=rpo,
                           taken_at=None if newest is None else newest.taken_at)
    if newest is None:
        raise RuntimeError(f"no verified backup of {dataset} in {store} "
                           f"({len(backups)} unverified)")
    age = ctx.now - newest.taken_at
    if age > rpo:
        raise RuntimeError(f"newest verified backup of {dataset} ({newest.id}) is "
                           f"{human_age(age)} old; RPO budget is {format_duration(rpo)}")
    return f"newest verified backup {newest.id} is {human_age(age)} old"


def _restore_host(restorer: RemoteTargets, target: Target) -> str:
    """The restore target host answers over SSH with its pinned host key, and its
    PostgreSQL binaries are where the restore will look for them."""
    from controller.backups.node import TargetOptions

    opts = TargetOptions.model_validate(target.options)
    host = restorer.host(target, opts)
    try:
        host.run(["test", "-x", f"{opts.pg_bin}/pg_ctl"], timeout=30)
    finally:
        host.close()
    return f"{target.host}: SSH with the pinned host key works; {opts.pg_bin}/pg_ctl present"

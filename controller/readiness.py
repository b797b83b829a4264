"""Readiness: is the backup site able to take over right now? Checked before an incident.

Each check is read-only and harmless. Every backend protocol has `ready()`: a backend
with a check of its own returns what it found and raises when not ready (a DNS provider
sends a signed no-op update, HAProxy answers on its admin socket); the default, None,
means nothing to check beyond building it, and adds no check. On top, each step's kind
checks the world its steps need (`StepKind.readiness`): the traffic destinations exist,
the DNS names are readable and their TTL prepared, the newest verified backup is within
the RPO budget and the restore target answers. Each data set of `spec.backups` adds three:
its newest verified backup within the set's RPO budget, a verified off-site copy within
it too, and a test restore passed within `testRestoreEvery`. A plan that keeps records
(`spec.records`) adds two: every run that finished is archived (given the journal: "N
runs not archived" with the store's error), and a drill passed within `drillEvery`
(read from the records store). Every check runs in a worker, bounded by `timeout`, its
detail redacted.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from controller.backends import Backends
from controller.backups import BackupStore, Restorer, Verifier
from controller.backups.naming import iso
from controller.backups.schedule import last_test_restore, newest_verified
from controller.db import Database
from controller.dns import DnsProvider
from controller.journal import Journal
from controller.model import PermanentError
from controller.notify import Notifier
from controller.plan import FailoverPlan
from controller.plan_backups import BackupSet
from controller.plan_records import RecordsSpec
from controller.records import archive
from controller.records.history import drills
from controller.records.store import open_store
from controller.schema import format_duration
from controller.secrets import redact
from controller.steps import CheckContext, step_kind
from controller.traffic import TrafficBackend

Backend = (TrafficBackend | DnsProvider | BackupStore | Restorer | Verifier | Notifier
           | Database)

_BY_ROLE: dict[str, Callable[[Backends, str], Backend]] = {
    "traffic": Backends.traffic, "dns": Backends.dns, "store": Backends.store,
    "restorer": Backends.restorer, "verifier": Backends.verifier,
    "notifier": Backends.notifier, "database": Backends.database}
"""Each role's typed accessor: a backend is checked as the protocol of its role."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _run(name: str, fn: Callable[[], str | None], timeout: float) -> Check | None:
    """Run one check in a worker, bounded by `timeout`; None when it had nothing to check."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        detail = pool.submit(fn).result(timeout=timeout)
        return None if detail is None else Check(name, True, redact(detail))
    except concurrent.futures.TimeoutError:
        return Check(name, False, f"no answer within {timeout:g} s")
    except Exception as exc:
        return Check(name, False, redact(f"{type(exc).__name__}: {exc}"))
    finally:
        pool.shutdown(wait=False)


def checks(plan: FailoverPlan, backends: Backends, *, now: float | None = None,
           timeout: float = 10.0, journal: Journal | None = None) -> list[Check]:
    now = time.time() if now is None else now
    out: list[Check] = []
    for spec in plan.spec.backends:
        try:
            backend = _BY_ROLE[spec.role](backends, spec.name)
        except Exception as exc:
            out.append(Check(f"backend {spec.name}", False,
                             redact(f"cannot be configured: {exc}")))
            continue
        if (check := _run(f"backend {spec.name}", backend.ready, timeout)) is not None:
            out.append(check)
    ctx = CheckContext(plan, backends, now)
    for step in plan.spec.steps:
        try:
            found = step_kind(step.action).readiness(step, ctx)
        except Exception as exc:
            out.append(Check(f"step {step.name}", False,
                             redact(f"cannot be checked: {type(exc).__name__}: {exc}")))
            continue
        out += [check for name, fn in found
                if (check := _run(f"step {step.name}: {name}", fn, timeout)) is not None]
    for bs in plan.spec.backups:
        found = [("backup within RPO", partial(_fresh, backends, bs, bs.store, now)),
                 ("off-site copy within RPO", partial(_fresh, backends, bs, bs.offsite, now)),
                 ("test restore", partial(_tested, backends, bs, now))]
        out += [check for name, fn in found
                if (check := _run(f"backups {bs.dataset}: {name}", fn, timeout)) is not None]
    records = plan.spec.records
    if records is not None:
        found = [("drill passed", partial(_drilled, plan.name, records, backends, now))]
        if journal is not None:
            found.insert(0, ("runs archived", partial(_archived, plan.name, journal, now)))
        out += [check for name, fn in found
                if (check := _run(f"records: {name}", fn, timeout)) is not None]
    return out


class RecordsNotReady(PermanentError):
    pass


ARCHIVE_GRACE = 60.0
"""Seconds a finished run may wait for its archive before readiness counts it."""


def _archived(plan: str, journal: Journal, now: float) -> str:
    """Every run that finished (more than a minute ago) is in the records store."""
    waiting = journal.unarchived(plan, finished_before=now - ARCHIVE_GRACE)
    if waiting:
        failed = journal.last_audit(plan, archive.FAILED)
        said = f" (store error: {failed['detail']})" if failed else ""
        raise RecordsNotReady(
            f"{len(waiting)} run{'s' if len(waiting) != 1 else ''} not archived{said}; they "
            "stay in the journal and are archived again every few minutes: is the records "
            "store reachable? (oldest: " + waiting[0] + ")")
    return "every finished run is archived"


def _drilled(plan: str, records: RecordsSpec, backends: Backends, now: float) -> str:
    """A drill of the plan passed within `drillEvery`."""
    store = open_store(records, secrets=backends.secrets)
    since = now - records.drill_every
    every = _age(records.drill_every)
    found = drills(store, plan, since=since)
    passed = [d for d in found if d.passed]
    if passed:
        return f"last passed {iso(passed[-1].at)}, {_age(now - passed[-1].at)} ago (every {every})"
    last = (f"the last drill within it, at {iso(found[-1].at)}, failed" if found
            else f"no drill recorded since {iso(since)}")
    raise RecordsNotReady(f"no passing drill of {plan} in the last {every} ({last}): run "
                          f"`failoverctl drill` (records.drillEvery: {every})")


class BackupsNotReady(PermanentError):
    pass


def _age(seconds: float) -> str:
    return format_duration(max(0, round(seconds)))


def _fresh(backends: Backends, bs: BackupSet, store: str, now: float) -> str:
    """The newest verified backup of the set in `store` is within the RPO budget."""
    where = "off-site copy" if store == bs.offsite else "backup"
    newest = newest_verified(backends.store(store).list(dataset=bs.dataset))
    if newest is None:
        raise BackupsNotReady(f"no verified {where} of {bs.dataset} in store {store}: run "
                              f"`failoverctl backup PLAN --dataset {bs.dataset}`")
    age = now - newest.taken_at
    if age > bs.rpo_budget:
        raise BackupsNotReady(
            f"the newest verified {where} of {bs.dataset} in store {store}, {newest.id}, is "
            f"{_age(age)} old, over the RPO budget of {_age(bs.rpo_budget)}: is the backup "
            "CronJob running? (`failoverctl backup PLAN --due`)")
    return f"{newest.id} in {store}, {_age(age)} old (budget {_age(bs.rpo_budget)})"


def _tested(backends: Backends, bs: BackupSet, now: float) -> str:
    """A test restore of the set passed within `testRestoreEvery`."""
    at = last_test_restore(backends.store(bs.store).list(dataset=bs.dataset))
    every = _age(bs.test_restore_every)
    if at is None:
        raise BackupsNotReady(f"no test restore of {bs.dataset} ever passed (wanted every "
                              f"{every}): set `testRestore: true` on verifier {bs.verifier} "
                              "and take a backup, or `failoverctl verify`")
    if now - at > bs.test_restore_every:
        raise BackupsNotReady(f"the last passed test restore of {bs.dataset} was at {iso(at)}, "
                              f"{_age(now - at)} ago, longer than testRestoreEvery {every}")
    return f"last passed {iso(at)}, {_age(now - at)} ago (every {every})"


def summary(results: list[Check]) -> dict[str, Any]:
    passed = sum(c.ok for c in results)
    return {
        "score": round(100.0 * passed / len(results), 1) if results else 100.0,
        "passed": passed,
        "failed": [asdict(c) for c in results if not c.ok],
        "checks": [asdict(c) for c in results],
    }

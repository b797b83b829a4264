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
detail redacted. The workers are a shared, bounded set of daemon threads (`_Workers`):
a check that never answers holds one of them — not the interpreter's exit, and not
another one each time readiness is asked again (it is waited for, not started again) —
and more checks than workers queue; with every worker held by checks that have not
answered for a check's timeout, that check fails, saying so.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
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


WORKERS = 16
"""Checks that may run at once, hung ones included."""

Key = tuple[str, str]  # (plan, check name)
Task = tuple[Key, Future[str | None], Callable[[], str | None]]


class WorkersBusy(Exception):
    """Every worker is held by a check that has not answered: this one is not run."""


class _Workers:
    """The daemon threads every readiness check runs on, shared by all plans and callers:
    at most `limit`, started on demand and kept for the next check. A check still
    running from an earlier call (hung) is waited for again, not started again. More
    checks than workers queue (a burst of new plans); a queued check is given up only
    when no worker has started or finished a check for as long as its own timeout, i.e.
    every worker is held by a check that has not answered."""

    def __init__(self, limit: int):
        self.limit = limit
        self._forked()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """No worker yet (and, in a forked child, none of the parent's threads)."""
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)  # a worker started or ended a check
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._threads = self._waiting = self._queued = self._busy = 0
        self._progress = time.monotonic()
        self._running: dict[Key, Future[str | None]] = {}

    def submit(self, key: Key, fn: Callable[[], str | None]) -> Future[str | None]:
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            future: Future[str | None] = Future()
            self._running[key] = future
            self._queued += 1
            self._tasks.put((key, future, fn))
            if self._queued > self._waiting and self._threads < self.limit:
                self._threads += 1
                threading.Thread(target=self._work, daemon=True,
                                 name="readiness-check").start()
            if self._queued <= self._threads - self._busy:
                self._progress = time.monotonic()  # a free worker takes it now
            return future

    def started(self, key: Key, future: Future[str | None], timeout: float) -> None:
        """Wait until a worker runs `future`; WorkersBusy (and the check withdrawn) when
        no worker has moved for `timeout`."""
        with self._moved:
            while not (future.running() or future.done()):
                stalled = time.monotonic() - self._progress
                if stalled >= timeout:
                    if not future.cancel():
                        return  # a worker took it just now
                    del self._running[key]
                    held = ", ".join(sorted(": ".join(k) for k, f in self._running.items()
                                            if f.running()))
                    raise WorkersBusy(f"not run: all {self.limit} readiness workers are held "
                                      f"by checks that have not answered ({held})")
                self._moved.wait(timeout - stalled)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            key, future, fn = self._tasks.get()
            with self._moved:
                self._waiting -= 1
                self._queued -= 1
                if not future.set_running_or_notify_cancel():
                    continue  # given up while queued (and forgotten by `started`)
                self._busy += 1
                self._progress = time.monotonic()
                self._moved.notify_all()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the check's caller
                future.set_exception(exc)
            with self._moved:
                del self._running[key]
                self._busy -= 1
                self._progress = time.monotonic()
                self._moved.notify_all()


_WORKERS = _Workers(WORKERS)


def _run(plan: str, name: str, fn: Callable[[], str | None],
         timeout: float) -> Check | None:
    """Run one check on a worker, bounded by `timeout` from when a worker takes it; None
    when it had nothing to check."""
    try:
        key = (plan, name)
        future = _WORKERS.submit(key, fn)
        _WORKERS.started(key, future, timeout)
        detail = future.result(timeout=timeout)
        return None if detail is None else Check(name, True, redact(detail))
    except FutureTimeout:
        return Check(name, False, f"no answer within {timeout:g} s")
    except WorkersBusy as exc:
        return Check(name, False, redact(str(exc)))
    except Exception as exc:
        return Check(name, False, redact(f"{type(exc).__name__}: {exc}"))


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
        if (check := _run(plan.name, f"backend {spec.name}", backend.ready,
                            timeout)) is not None:
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
                if (check := _run(plan.name, f"step {step.name}: {name}", fn,
                                  timeout)) is not None]
    for bs in plan.spec.backups:
        found = [("backup within RPO", partial(_fresh, backends, bs, bs.store, now)),
                 ("off-site copy within RPO", partial(_fresh, backends, bs, bs.offsite, now)),
                 ("test restore", partial(_tested, backends, bs, now))]
        out += [check for name, fn in found
                if (check := _run(plan.name, f"backups {bs.dataset}: {name}", fn,
                                timeout)) is not None]
    records = plan.spec.records
    if records is not None:
        found = [("drill passed", partial(_drilled, plan.name, records, backends, now))]
        if journal is not None:
            found.insert(0, ("runs archived", partial(_archived, plan.name, journal, now)))
        out += [check for name, fn in found
                if (check := _run(plan.name, f"records: {name}", fn, timeout)) is not None]
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

"""Archiving into the records store: each finished run, each drill's verdict.

Owns what is written where (the layout every reader of the store relies on) and when:

- `runs/<plan>/<run-id>.json` and `.md`: a finished run's report (`controller.report`:
  run, steps with their evidence, decisions, audit) with its notices and `kind: run`;
- `drills/<plan>/<finished-at>-<run-id>.json`: a drill's verdict with `kind: drill`
  (`finished-at` is `YYYYmmddTHHMMSSZ`, so keys sort by time): written by the drill
  itself (`record_drill`), or, for a drill the operator ran, by the `Archiver` as it
  archives the drill's failback (`controller.records.drills`);
- `incidents/<plan>/<run-id>.json|.md`: incident records (`controller.records.incident`).

`Archiver` is the engine's: a run is archived the moment it ends, and then marked
archived in the journal (`Journal.mark_archived`), which is what lets `Journal.prune`
remove it. A store that cannot be reached never stops or fails a run: the run stays
unarchived in the journal, the failure is audited (once per distinct error, not once
per attempt), and `catch_up` (every cycle, one clock read when nothing is due) tries
again after a back-off that doubles from 30 s to 10 min; every 5 min it also archives
runs that ended without this archiver (superseded, adopted from another replica).
Nothing is lost meanwhile: the journal keeps a run until it is archived, and
`readiness` reports the runs still waiting. When the controller stops, `flush` makes one
last attempt, bounded in time, and logs what is still waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from controller import report as reports
from controller.journal import Journal
from controller.plan_records import RecordsSpec
from controller.records.drills import is_drill_failback, judge
from controller.records.store import RecordExists, RecordsStore, open_store
from controller.secrets import Secrets, redact

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 30.0, 600.0
"""Seconds before the first retry of a failed archive, and the most between two."""
SWEEP = 300.0
"""Seconds between two looks at the journal for runs that ended elsewhere."""
ARCHIVED, FAILED = "archive", "archive-failed"
"""Audit actions of a run archived, and of an attempt that failed."""


def run_key(plan: str, run_id: str, ext: str = "json") -> str:
    return f"runs/{plan}/{run_id}.{ext}"


def stamp(at: float) -> str:
    """A UTC time that sorts as text: 20261205T104500Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def drill_key(plan: str, finished_at: float, run_id: str) -> str:
    return f"drills/{plan}/{stamp(finished_at)}-{run_id}.json"


def run_document(journal: Journal, run_id: str) -> dict[str, Any]:
    """The archived form of a run: its report, its notices apart, `kind: run`."""
    doc = reports.build(journal, run_id)
    doc["kind"] = "run"
    doc["notices"] = [a for a in doc["audit"] if str(a["action"]).startswith("notify")]
    return doc


def run_markdown(doc: dict[str, Any]) -> str:
    lines = [reports.to_markdown(doc).rstrip("\n"), "", "## Audit", ""]
    lines += [f"- {stamp(a['at'])} {a['actor']}: {a['action']}"
              + (f" — {a['detail']}" if a.get("detail") else "") for a in doc["audit"]]
    return "\n".join(lines) + "\n"


def to_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=True, default=str).encode()


def archive_run(store: RecordsStore, journal: Journal, run_id: str) -> str:
    """Write the run's JSON and Markdown; returns the JSON's key. Archived before (a
    retry after the journal was not told) counts as done: the first write stands."""
    doc = run_document(journal, run_id)
    plan = doc["run"]["plan"]
    for key, data, content_type in (
            (run_key(plan, run_id, "md"), run_markdown(doc).encode(),
             "text/markdown; charset=utf-8"),
            (run_key(plan, run_id), to_json(doc), "application/json")):
        with contextlib.suppress(RecordExists):  # the first write stands
            store.put(key, data, content_type=content_type)
    return run_key(plan, run_id)


def archive_drill(store: RecordsStore, verdict: dict[str, Any]) -> str:
    """Write a drill's verdict (`controller.drill`); returns its key."""
    failover = verdict.get("failover") or {}
    run_id = str((failover.get("run") or {}).get("id") or f"{verdict['plan']}-drill")
    finished = max([float(v) for v in (verdict.get("timeline") or {}).values()]
                   or [time.time()])
    key = drill_key(str(verdict["plan"]), finished, run_id)
    store.put(key, to_json({**verdict, "kind": "drill", "finishedAt": finished}),
              content_type="application/json")
    return key


def record_drill(records: RecordsSpec | None, verdict: dict[str, Any], *,
                 secrets: Secrets | None = None) -> None:
    """Archive a drill's verdict to the plan's records store, if it keeps records. A store
    that fails is logged, never fails the drill: its reports are written and readiness
    keeps warning until a passing drill is on record."""
    if records is None:
        return
    try:
        store = open_store(records, secrets=secrets)
        key = archive_drill(store, verdict)
    except Exception as exc:
        log.warning("%s: the drill's verdict was NOT archived, so readiness does not count "
                    "this drill: %s", verdict.get("plan"),
                    redact(f"{type(exc).__name__}: {exc}"))
        return
    log.info("%s: drill verdict archived as %s in %s", verdict.get("plan"), key, store.where)


class Archiver:
    """Archives one plan's finished runs as they end (and the verdict of a drill the
    operator ran, with its failback), retrying a failed store later."""

    def __init__(self, plan: str, records: RecordsSpec | None, journal: Journal,
                 now: Callable[[], float], *, secrets: Secrets | None = None,
                 store: Callable[[RecordsSpec], RecordsStore] | None = None):
        self.plan, self.records, self.journal, self.now = plan, records, journal, now
        self._open = store or (lambda spec: open_store(spec, secrets=secrets))
        self._store: RecordsStore | None = None
        self.due = 0.0  # when the journal is next looked at for runs to archive
        self.backoff = RETRY_FIRST
        self.error: str | None = None  # the last failure, audited once

    def ended(self) -> None:
        """A run just ended: archive it now (and whatever else waits)."""
        self.due = 0.0
        self.catch_up()

    def catch_up(self) -> None:
        """Every cycle: when due, archive every finished run the journal has not marked
        archived (ended here, superseded, adopted from another replica). Due again after
        `SWEEP`, or after the back-off when the store failed; not while a run is going, so
        a store that answers slowly never holds up its steps. Never raises for the store;
        a journal error does raise (the journal is the record until then)."""
        if (self.records is None or self.now() < self.due
                or self.journal.active_run(self.plan) is not None):
            return
        self.archive_all()

    def archive_all(self) -> None:
        """Archive every finished run not archived yet, now; stop at the first the store
        fails (audited, retried after the back-off)."""
        if self.records is None:
            return
        for run_id in self.journal.unarchived(self.plan):
            try:
                if self._store is None:
                    self._store = self._open(self.records)
                key = archive_run(self._store, self.journal, run_id)
                run = self.journal.run(run_id)
                if run is not None and is_drill_failback(run):  # `failoverctl drill fop/..`
                    with contextlib.suppress(RecordExists):  # the first write stands
                        archive_drill(self._store, judge(self.journal, run))
            except Exception as exc:
                self._failed(run_id, exc)
                return
            now = self.now()
            self.journal.mark_archived(run_id, at=now)
            self.journal.audit(at=now, actor="controller", action=ARCHIVED, plan=self.plan,
                               run_id=run_id,
                               detail=f"archived as {key} in {self._store.where}")
        self.error, self.backoff = None, RETRY_FIRST
        self.due = self.now() + SWEEP

    def _failed(self, run_id: str, exc: Exception) -> None:
        said = redact(f"{type(exc).__name__}: {exc}")
        now = self.now()
        self.due = now + self.backoff
        log.warning("%s: run %s not archived, trying again in %.0f s: %s", self.plan,
                    run_id, self.backoff, said)
        self.backoff = min(self.backoff * 2, RETRY_MAX)
        if said != self.error:
            self.error = said
            self.journal.audit(at=now, actor="controller", action=FAILED, plan=self.plan,
                               run_id=run_id, detail=said)


def flush(archivers: Iterable[Archiver], *, deadline: float) -> dict[str, list[str]]:
    """The controller stops: one last attempt to archive every ended run not archived yet
    (a retry pending after the store failed, whatever its back-off), until `deadline`
    (`time.monotonic()`). The attempt runs in a daemon thread, so a store that hangs
    cannot hold the stop past the deadline. Returns, per plan, the runs still not archived
    (each logged): they stay in the journal, archived when the controller runs again."""
    todo = [a for a in archivers if a.records is not None]

    def attempt() -> None:
        for archiver in todo:
            if time.monotonic() >= deadline:
                return
            try:
                archiver.archive_all()
            except Exception as exc:  # the journal: those runs stay unarchived, said below
                log.warning("%s: last archive attempt failed: %s", archiver.plan,
                            redact(f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=attempt, name="records-flush", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    left: dict[str, list[str]] = {}
    for archiver in todo:
        runs = archiver.journal.unarchived(archiver.plan)
        if runs:
            left[archiver.plan] = runs
            log.warning("%s: %d ended runs NOT archived before the controller stopped (%s); "
                        "they stay in the journal, archived when the controller runs again",
                        archiver.plan, len(runs), ", ".join(runs))
    return left

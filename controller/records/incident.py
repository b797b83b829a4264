"""The incident record of a failover run: what the emergency plans want written within
2 h of detection — time, place, scope, symptoms (each to the minute), the response level
and its changes, and the actions taken with their times — as JSON and Markdown in the
plan's records store. The store keeps what it is given for ever and never overwrites, so
each version is a record of its own: `incidents/<plan>/<run id>/<NNNN>.json|.md`, the
highest number the newest (`closed: true` once the run ended); an auditor sees what was
known when.

`document` builds the record from the journal's rows alone (pure, time injected), so the
same run gives the same record after a restart:

- time: detection, start, end, and the record's own target (`within`, default 2 h);
- place: the site that failed (the primary) and the one that took over;
- scope: the plan's services that were down during the run — down now, named in a
  symptom, or seen down by this controller earlier in the run (`seen`);
- symptoms: the policy's decision sentences from the trigger window before detection to
  the end of the run;
- level: the first, the current, and each `escalate` of the audit;
- actions: each step (start, end, status, who) and each person's or controller's audited
  action on the run (requests, approvals, notices sent), oldest first.

`IncidentRecords` keeps one plan's records current: the engine calls `touch` when a
notice is decided (a start, a step, a level change, the end) and `tick` on every cycle
(so a run that waits hours for an approval still gets its record in time). Writing goes
to the store on a thread of its own, the latest version only: a slow or dead store never
holds up a step; a failed write is retried on the next cycles (at most every `retry`
seconds), each failure audited as `incident-record-failed` (once per streak, plus once
if the target passes unwritten), each written version as `incident-record`.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.journal import Journal, Run
from controller.model import StepRecord
from controller.notices import clock, span
from controller.plan import FailoverPlan
from controller.plan_records import RecordsSpec
from controller.secrets import redact

log = logging.getLogger(__name__)

DEFAULT_WITHIN = 7200.0  # the plans: an incident record within 2 h of detection
REFRESH = 60.0  # between two rewrites of a running incident's record on plain ticks
RETRY = 30.0  # between two tries after a failed write
KIND = "incident"
WRITTEN, FAILED = "incident-record", "incident-record-failed"
OPENED, CLOSED = "incident record opened", "incident record closed"
_QUIET = {"notify-pending", WRITTEN, FAILED}  # bookkeeping, not actions
_ESCALATE = re.compile(r"level (\S+) -> (\d+)")


class Sink(Protocol):
    """Where records go: the records store (`controller.records.store`) as this module
    uses it."""

    def put(self, key: str, body: bytes, *, content_type: str) -> None: ...

    def keys(self, prefix: str) -> Iterator[str]: ...


def prefix(plan: str, run_id: str) -> str:
    """Where the versions of a run's incident record are kept."""
    return f"incidents/{plan}/{run_id}/"


def version(plan: str, run_id: str, number: int) -> tuple[str, str]:
    """The store keys of one version of a run's incident record: (JSON, Markdown)."""
    base = f"{prefix(plan, run_id)}{number:04d}"
    return f"{base}.json", f"{base}.md"


def latest(keys: Iterable[str]) -> int:
    """The highest version number among a run's keys (0: none)."""
    return max((int(k.rpartition("/")[2][:-5]) for k in keys
                if re.fullmatch(r"\d{4,}\.json", k.rpartition("/")[2])), default=0)


def location(spec: RecordsSpec, key: str) -> str:
    """Where a reader finds `key` of the store `spec` names: a path, or an s3:// URL."""
    if spec.store.kind == "directory":
        return f"{spec.store.directory().path.rstrip('/')}/{key}"
    s3 = spec.store.s3()
    return f"s3://{s3.bucket}/" + "/".join(p for p in (s3.prefix.strip("/"), key) if p)


def _at(epoch: float | None) -> dict[str, Any] | None:
    """An instant both ways: epoch seconds for programs, to the minute for people."""
    return None if epoch is None else {"at": epoch, "time": clock(epoch)}


def scope(plan: FailoverPlan, down: Mapping[str, float], sentences: Iterable[str],
          seen: Mapping[str, float]) -> list[dict[str, Any]]:
    """The plan's services affected, in plan order: down now or earlier in the run
    (`seen`: service -> down since), or named in a symptom (time unknown: None)."""
    named = " ".join(sentences)
    out = []
    for service in plan.spec.services:
        times = [t for t in (seen.get(service.name), down.get(service.name)) if t is not None]
        if not times and not re.search(rf"\b{re.escape(service.name)}\b", named):
            continue
        out.append({"service": service.name, "core": service.core,
                    "downSince": _at(min(times)) if times else None})
    return out


def levels(run: Run, trail: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's first and current level and each change, from its `escalate` rows."""
    changes = []
    for row in trail:
        match = _ESCALATE.search(str(row.get("detail", "")))
        if row.get("action") == "escalate" and match:
            changes.append({**(_at(row["at"]) or {}), "from": _level(match.group(1)),
                            "to": int(match.group(2))})
    first = changes[0]["from"] if changes else run.level
    return {"initial": first, "current": run.level, "changes": changes}


def _level(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def actions(steps: Iterable[StepRecord], trail: Iterable[Mapping[str, Any]]
            ) -> list[dict[str, Any]]:
    """Each step that started and each audited action on the run, oldest first."""
    out = []
    for rec in steps:
        if rec.started_at is None:
            continue
        out.append({**(_at(rec.started_at) or {}), "step": rec.name, "action": rec.action,
                    "status": rec.status.value, "by": rec.approved_by,
                    "ended": _at(rec.finished_at), "target": rec.target_s, "met": rec.met,
                    "what": f"step {rec.name} ({rec.action}) {rec.status.value}"})
    for row in trail:
        if row.get("action") in _QUIET:
            continue
        out.append({**(_at(row["at"]) or {}), "step": None, "action": row["action"],
                    "status": None, "by": row.get("actor"), "ended": None, "target": None,
                    "met": None, "what": f"{row['action']}: {row.get('detail') or ''}".strip()})
    return sorted(out, key=lambda a: a["at"])


def document(plan: FailoverPlan, run: Run, *, steps: Sequence[StepRecord],
             decisions: Iterable[Mapping[str, Any]], trail: Sequence[Mapping[str, Any]],
             down: Mapping[str, float], seen: Mapping[str, float], within: float,
             now: float) -> dict[str, Any]:
    """The incident record of `run` as it stands at `now` (see the module doc)."""
    since = run.detected_at - plan.spec.trigger.window
    until = run.finished_at if run.finished_at is not None else now
    symptoms = [{**(_at(d["at"]) or {}), "sentence": d["sentence"]}
                for d in decisions if since <= d["at"] <= until]
    sites = plan.spec.sites
    return {
        "kind": KIND, "version": 1, "plan": plan.name, "run": run.id,
        "phase": run.phase.value, "closed": run.finished_at is not None,
        "outcome": run.outcome, "cause": run.origin.text(),
        "time": {"detected": _at(run.detected_at), "started": _at(run.started_at),
                 "ended": _at(run.finished_at)},
        "place": {"site": sites.primary.name, "takenOverBy": sites.backup.name},
        "scope": scope(plan, down, (s["sentence"] for s in symptoms), seen),
        "symptoms": symptoms,
        "level": levels(run, trail),
        "actions": actions(steps, trail),
        "target": {"withinSeconds": within, "due": _at(run.detected_at + within)},
        "written": _at(now),
    }


def _when(value: Mapping[str, Any] | None) -> str:
    return str(value["time"]) if value else "-"


def to_markdown(doc: Mapping[str, Any]) -> str:
    """The record for people, in the order the plans list its parts."""
    t, place, lvl = doc["time"], doc["place"], doc["level"]
    state = "closed" if doc["closed"] else "open"
    changes = ", ".join(f"{c['from'] or '-'} -> {c['to']} at {c['time']}"
                        for c in lvl["changes"]) or "none"
    lines = [
        f"# Incident record: {doc['plan']} run {doc['run']}",
        "",
        f"- Status: {state}, phase {doc['phase']}; outcome: {doc['outcome'] or 'in progress'}",
        f"- Time: detected {_when(t['detected'])}; response started {_when(t['started'])}; "
        f"ended {_when(t['ended'])}",
        f"- Place: site {place['site']} (taken over by {place['takenOverBy']})",
        f"- Cause: {doc['cause']}",
        f"- Level: {lvl['initial'] or '-'} at first, {lvl['current'] or '-'} now; "
        f"changes: {changes}",
        f"- Written: {_when(doc['written'])} (due by {_when(doc['target']['due'])})",
        "",
        "## Scope",
        "",
        *([f"- {s['service']}{' (core)' if s['core'] else ''}: down since "
           f"{_when(s['downSince'])}" for s in doc["scope"]] or ["- no service seen down"]),
        "",
        "## Symptoms",
        "",
        *([f"- {s['time']}: {s['sentence']}" for s in doc["symptoms"]] or ["- none recorded"]),
        "",
        "## Actions",
        "",
        "| time | action | by | ended | target |",
        "|------|--------|----|-------|--------|",
    ]
    for a in doc["actions"]:
        target = "-" if a["target"] is None else (
            f"{span(a['target'])} {'met' if a['met'] else 'MISSED' if a['met'] is False else ''}"
            .strip())
        lines.append(f"| {a['time']} | {_cell(a['what'])} | {_cell(a['by'] or '-')} | "
                     f"{_when(a['ended'])} | {target} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


# --- keeping the records of one plan current ---------------------------------------------------


@dataclass
class _Incident:
    """What this controller knows of one run's record."""

    seen: dict[str, float] = field(default_factory=dict)  # service -> down since
    built: float | None = None  # when the last version was built
    written: bytes = b""  # the last version the store took (JSON)
    queued: bytes = b""  # the last version handed to the writer (JSON)
    closed: bool = False  # that version is the run's last (the run had ended)
    number: int | None = None  # the last version number in the store (None: not listed)
    failing: bool = False  # the last write failed (audited once per streak)
    tried: float | None = None  # when the last failed write was tried
    late: bool = False  # the target passed unwritten (audited once)


class IncidentRecords:
    """The incident records of one plan's failover runs; see the module doc."""

    def __init__(self, plan: FailoverPlan, journal: Journal, sink: Callable[[], Sink], *,
                 now: Callable[[], float], where: Callable[[str], str],
                 within: float = DEFAULT_WITHIN, refresh: float = REFRESH,
                 retry: float = RETRY):
        self.plan, self.journal, self._open = plan, journal, sink
        self._sink: Sink | None = None  # opened on the writer thread, at the first write
        self.now, self.where, self.within = now, where, within
        self.refresh, self.retry = refresh, retry
        self._runs: dict[str, _Incident] = {}
        self._cond = threading.Condition()
        self._queue: dict[str, tuple[_Incident, bytes, bytes]] = {}  # run id -> newest
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    def link(self, run: Run) -> str:
        """Where the run's record is kept (its versions), for notices; '' if it has none."""
        return self.where(prefix(self.plan.name, run.id)) if _incident(run) else ""

    def touch(self, run: Run, down: Mapping[str, float]) -> None:
        """Something happened in the run: write its record now (on the writer thread)."""
        self._update(run, down, force=True)

    def tick(self, down: Mapping[str, float]) -> None:
        """Once a cycle: keep the newest failover run's record current, retry a failed
        write, and audit a record still unwritten past its target."""
        runs = self.journal.runs(self.plan.name, limit=1)
        if runs:
            self._update(runs[0], down, force=False)

    def _update(self, run: Run, down: Mapping[str, float], *, force: bool) -> None:
        if not _incident(run):
            return
        now = self.now()
        inc = self._runs.setdefault(run.id, _Incident())
        if inc.closed or (inc.failing and inc.tried is not None
                          and now - inc.tried < self.retry):
            return
        if (not force and inc.written and inc.built is not None
                and run.finished_at is None and now - inc.built < self.refresh):
            return  # an open record is rebuilt on news, and now and then
        for name, since in down.items():
            inc.seen[name] = min(since, inc.seen.get(name, since))
        journal = self.journal
        run = journal.run(run.id) or run
        trail = journal.audit_trail(run_id=run.id)
        written = [str(r["detail"]) for r in trail if r["action"] == WRITTEN]
        if not inc.written and any(d.startswith(CLOSED) for d in written):
            inc.closed = True  # closed by an earlier controller: the record is final
            return
        if not written:
            self._late(run, inc, now)
        doc = document(self.plan, run, steps=journal.steps(run.id),
                       decisions=journal.decisions(self.plan.name, limit=200),
                       trail=trail, down=down, seen=inc.seen, within=self.within, now=now)
        body = json.dumps(doc, indent=2, sort_keys=True).encode()
        inc.built = now
        if _content(body) == _content(inc.queued):
            return
        inc.queued = body
        with self._cond:
            self._queue[run.id] = (inc, body, to_markdown(doc).encode())
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, daemon=True,
                                                name=f"incident records {self.plan.name}")
                self._thread.start()

    def _late(self, run: Run, inc: _Incident, now: float) -> None:
        """Audit, once, a record not written yet past its target."""
        if inc.late or now - run.detected_at <= self.within:
            return
        inc.late = True
        self._audit(run.id, FAILED, f"incident record of run {run.id} not written within "
                                    f"{span(self.within)} of detection (target MISSED)")

    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                run_id = next(iter(self._queue))
                inc, body, markdown = self._queue.pop(run_id)  # the newest version
            self._write(run_id, inc, body, markdown)

    def _write(self, run_id: str, inc: _Incident, body: bytes, markdown: bytes) -> None:
        try:
            if self._sink is None:
                self._sink = self._open()
            if inc.number is None:
                inc.number = latest(self._sink.keys(prefix(self.plan.name, run_id)))
            json_key, md_key = version(self.plan.name, run_id, inc.number + 1)
            self._sink.put(json_key, body, content_type="application/json")
            self._sink.put(md_key, markdown, content_type="text/markdown; charset=utf-8")
            inc.number += 1
        except Exception as exc:  # a record never stops a failover: audited, retried
            inc.number, inc.tried = None, self.now()  # listed again before the next try
            inc.queued = inc.written  # built and handed over again at the next try
            if not inc.failing:
                inc.failing = True
                error = redact(str(exc)) or type(exc).__name__
                log.warning("%s: incident record of run %s not written (retried): %s",
                            self.plan.name, run_id, error)
                self._audit(run_id, FAILED, f"incident record of run {run_id} not written "
                                            f"(retried every {span(self.retry)}): {error}")
            return
        first = not inc.written
        inc.written, inc.failing, inc.tried = body, False, None
        inc.closed = closed = json.loads(body)["closed"]
        if first or closed:
            self._audit(run_id, WRITTEN, f"{CLOSED if closed else OPENED}: "
                                         f"{self.where(md_key)}")

    def _audit(self, run_id: str, action: str, detail: str) -> None:
        try:
            self.journal.audit(at=self.now(), actor="controller", action=action,
                               plan=self.plan.name, run_id=run_id, detail=detail)
        except Exception as exc:
            log.error("%s: could not audit %s of run %s: %s", self.plan.name, action, run_id,
                      redact(str(exc)))

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the writer is idle; True if nothing is left."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)


def _incident(run: Run) -> bool:
    """A failover that ran (a failback, or a request answered as refused, is none)."""
    return run.kind == "failover" and bool(run.steps)


def _content(body: bytes) -> Any:
    """A record's content without the time it was written: what decides a rewrite."""
    if not body:
        return None
    doc = json.loads(body)
    doc.pop("written", None)
    return doc


_LIVE: weakref.WeakSet[IncidentRecords] = weakref.WeakSet()


def settle(timeout: float = 10.0) -> bool:
    """Wait until no writer of this process is writing (at most `timeout` s in all)."""
    end = time.monotonic() + timeout
    done = True
    for records in list(_LIVE):
        done = records.flush(max(0.0, end - time.monotonic())) and done
    return done


atexit.register(settle)

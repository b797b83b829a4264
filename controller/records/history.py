"""Reading the records store back: past runs and drills of a plan, and one archived run.

Owns what `failoverctl history` and `failoverctl report` read, and readiness's "a drill
passed within drillEvery". Keys carry their time (a run id holds its start in epoch
seconds, a drill key its finish as `YYYYmmddTHHMMSSZ`, see `archive`), so a `since`
window skips older records without reading them. A damaged record (`RecordDamaged`,
naming its key) does not hide the others: it is listed in `damaged` and the listing
goes on; `find_run` raises it, since the run asked for cannot be shown.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from controller.records.store import RecordDamaged, RecordMissing, RecordsStore, get_json

_RUN_STARTED = re.compile(r"-(\d{9,})-[0-9a-f]{6}$")
_DRILL = re.compile(r"^(\d{8}T\d{6}Z)-")


@dataclass(frozen=True)
class RunEntry:
    key: str
    run: dict[str, Any]  # `Run.to_json` of the archived report
    summary: dict[str, Any]


@dataclass(frozen=True)
class DrillEntry:
    key: str
    plan: str
    at: float  # when the drill finished
    passed: bool
    failed_checks: list[str]
    scenario: str | None


@dataclass
class Listing:
    runs: list[RunEntry] = field(default_factory=list)
    drills: list[DrillEntry] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # one message per damaged record


def _prefix(kind: str, plan: str | None) -> str:
    return f"{kind}/{plan}/" if plan else f"{kind}/"


def _run_started(key: str) -> float | None:
    m = _RUN_STARTED.search(key.rsplit("/", 1)[-1].removesuffix(".json"))
    return float(m.group(1)) if m else None


def _drill_at(key: str) -> float | None:
    m = _DRILL.match(key.rsplit("/", 1)[-1])
    return float(calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%SZ"))) if m else None


def _documents(store: RecordsStore, prefix: str, keep: Callable[[str], bool],
               out: Listing) -> Iterator[tuple[str, dict[str, Any]]]:
    """The JSON records under `prefix` whose key `keep` accepts; a damaged one is named in
    `out.damaged` and left out."""
    for key in store.keys(prefix):
        if not key.endswith(".json") or not keep(key):
            continue
        try:
            doc = get_json(store, key)
        except RecordDamaged as exc:
            out.damaged.append(str(exc))
            continue
        yield key, doc


def runs(store: RecordsStore, plan: str | None, *, since: float = 0.0,
         listing: Listing | None = None) -> Listing:
    """The archived runs (of `plan`, or every plan) started since `since`, oldest first."""
    out = listing or Listing()

    def recent(key: str) -> bool:
        started = _run_started(key)
        return started is None or started >= since

    for key, doc in _documents(store, _prefix("runs", plan), recent, out):
        run = doc.get("run") or {}
        if float(run.get("startedAt") or 0) >= since:
            out.runs.append(RunEntry(key, run, doc.get("summary") or {}))
    out.runs.sort(key=lambda e: float(e.run.get("startedAt") or 0))
    return out


def drills(store: RecordsStore, plan: str | None, *, since: float = 0.0,
           listing: Listing | None = None) -> list[DrillEntry]:
    """The archived drill verdicts (of `plan`, or every plan) since `since`, oldest first."""
    out = listing or Listing()

    def recent(key: str) -> bool:
        at = _drill_at(key)
        return at is not None and at >= since

    for key, doc in _documents(store, _prefix("drills", plan), recent, out):
        at = _drill_at(key) or 0.0  # never None: `recent` kept it
        scenario = doc.get("scenario") or {}
        out.drills.append(DrillEntry(
            key, str(doc.get("plan", "")), float(doc.get("finishedAt") or at),
            doc.get("passed") is True,
            [str(c.get("check")) for c in doc.get("checks", []) if not c.get("ok")],
            scenario.get("name")))
    out.drills.sort(key=lambda d: d.at)
    return out.drills


def find_run(store: RecordsStore, run_id: str) -> dict[str, Any]:
    """The archived report of `run_id` (RecordMissing when the store has none)."""
    for key in store.keys("runs/"):
        if key.endswith(f"/{run_id}.json"):
            return get_json(store, key)
    raise RecordMissing(f"no archived run {run_id!r} in {store.where}")

"""The verdict of a drill the operator ran (`failoverctl drill fop/NAME`), judged from its runs.

A cluster drill is driven by the CLI but run by the operator: the CLI asks for a planned
failover, then for a failback, with the reasons below (`FAILOVER_REASON`,
`FAILBACK_REASON`), and the operator runs both like any request. The operator holds the
runs and reaches the records store (a directory store lives in its pod; the person
running the drill may read no Secret), so it judges the drill: when its `Archiver`
archives a failback asked for with `FAILBACK_REASON`, `judge` judges that failback and
the failover run just before it, and the verdict is archived under `drills/<plan>/` like
a sandbox drill's — readiness counts it against `drillEvery`, `failoverctl history
--drills` lists it. The checks are those the runs' records prove: the failover ended
FailedOver, every step of it succeeded and met its time target, the failback ended
Healthy with every step succeeded. A drill of a plan file (`failoverctl drill PLAN`)
judges itself (`controller.drill`) and fails back with another reason, so no drill is
judged twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller import report as reports
from controller.journal import Journal, Run
from controller.model import Phase, StepStatus
from controller.records.evaluate import data_lost, recovery

FAILOVER_REASON = "DR drill: planned failover to the backup site"
FAILBACK_REASON = "DR drill: back to the primary site"
"""The reasons `failoverctl drill fop/NAME` requests its two runs with."""
FAULT = "planned failover through the operator (no outage caused)"
LOOK_BACK = 50
"""Runs of the plan, newest first, searched for the failback and the failover before it."""

_DONE = {StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value}

Check = dict[str, Any]


def is_drill_failback(run: Run) -> bool:
    return run.kind == "failback" and run.reason == FAILBACK_REASON


def _check(stage: str, name: str, ok: bool, detail: str) -> Check:
    return {"check": name, "ok": ok, "detail": detail, "stage": stage}


def _steps(stage: str, rep: Mapping[str, Any]) -> Check:
    bad = [f"{s['name']} {s['status']}" + (f": {s['error']}" if s.get("error") else "")
           for s in rep["steps"] if s["status"] not in _DONE]
    return _check(stage, f"{stage} steps succeeded", not bad, "; ".join(bad) or
                  f"all {len(rep['steps'])} steps succeeded (or were skipped)")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _targets(rep: Mapping[str, Any]) -> Check:
    missed = [f"{s['name']} (done {_seconds(s.get('sinceDetectionSeconds'))} after "
              f"detection, target {_seconds(s.get('targetSeconds'))})"
              for s in rep["steps"] if s.get("met") is False]
    return _check("failover", "time targets met", not missed,
                  "missed: " + ", ".join(missed) if missed else "all met")


def objectives(rep: Mapping[str, Any] | None) -> dict[str, Any]:
    """RTO (detection to the end of a failover that ended FailedOver) against the plan's
    largest step target, and RPO (the data its promote/restore steps lost) against the
    step's own budget."""
    out: dict[str, Any] = {"rto": None, "rpo": None}
    if rep is None:
        return out
    run = rep["run"]
    targets = [s["targetSeconds"] for s in rep["steps"] if s.get("targetSeconds")]
    target = max(targets) if targets else None
    achieved = recovery(rep)
    if achieved is not None:
        out["rto"] = {"achievedSeconds": round(achieved, 3), "targetSeconds": target,
                      "met": None if target is None else achieved <= target,
                      "tripSeconds": round(run["startedAt"] - run["detectedAt"], 3),
                      "source": "largest step target of the plan"}
    lost = data_lost(rep)
    step = next((s for s in rep["steps"]
                 if (s.get("evidence") or {}).get("rpoSeconds") == lost), None)
    if lost is not None and step is not None:
        budget = step["evidence"].get("rpoBudgetSeconds")
        out["rpo"] = {"achievedSeconds": lost, "targetSeconds": budget,
                      "met": None if budget is None else lost <= budget,
                      "step": step["name"], "source": f"{step['action']} step's rpo"}
    return out


def _failover_before(journal: Journal, back: Run) -> Run | None:
    """The run just before the failback, when it is the drill's failover."""
    runs = journal.runs(back.plan, limit=LOOK_BACK)
    ids = [r.id for r in runs]
    earlier = runs[ids.index(back.id) + 1:] if back.id in ids else []
    if earlier and earlier[0].kind == "failover" and earlier[0].reason == FAILOVER_REASON:
        return earlier[0]
    return None


def judge(journal: Journal, back: Run) -> dict[str, Any]:
    """The verdict of the drill whose failback (`is_drill_failback`) is `back`, finished:
    the shape of a sandbox drill's (manifests/drills/verdict.schema.json)."""
    failover = _failover_before(journal, back)
    over = reports.build(journal, failover.id) if failover is not None else None
    rep = reports.build(journal, back.id)
    checks: list[Check] = []
    timeline: dict[str, float] = {}
    if over is None:
        checks.append(_check("failover", "failover ran", False,
                             f"no failover asked for as a drill ({FAILOVER_REASON!r}) "
                             f"ran just before failback {back.id}"))
    else:
        run = over["run"]
        timeline |= {"detectedAt": run["detectedAt"], "trippedAt": run["startedAt"]}
        if run["finishedAt"] is not None:
            timeline["failoverEndedAt"] = run["finishedAt"]
        checks += [_check("failover", "failed over", run["phase"] == Phase.FAILED_OVER.value,
                          f"run {run['id']} ended {run['phase']}: {run['outcome']}"),
                   _steps("failover", over), _targets(over)]
    timeline["failedBackAt"] = float(back.finished_at or back.started_at)
    checks += [_check("failback", "failed back", back.phase is Phase.HEALTHY,
                      f"run {back.id} ended {back.phase.value}: {back.outcome}"),
               _steps("failback", rep)]
    return {"plan": back.plan, "passed": all(c["ok"] for c in checks), "checks": checks,
            "timeline": timeline, "faults": [FAULT], "objectives": objectives(over),
            "failover": over, "failback": rep}

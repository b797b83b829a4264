"""The FailoverPlan `status` the operator writes: built from the journal, diffed into Events.

Owns one translation, so the journal (everywhere) and the status (in the cluster) carry the
same record: phase, level, active site, the last decision sentence and when it was made,
readiness, conditions with reasons, and the current (or last) run with every step's
elapsed time against its target, attempts and evidence. The run's step definitions and
the policy state ride along, so another replica that takes over can adopt the run
(`Journal.import_run`) and continue it without repeating a finished step.

`events` compares two statuses and says what happened in between (phase changes, new
decisions, step transitions), one Event each.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller.journal import Journal, PlanState
from controller.model import Phase

CONDITIONS = ("Ready", "Tripped", "FailingOver", "FailedOver", "Degraded")
_TRIPPED = {Phase.TRIPPED, Phase.AWAITING_APPROVAL, Phase.FAILING_OVER, Phase.FAILED_OVER,
            Phase.FAILING_BACK}


def rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(phase: Phase, problems: list[str], readiness: dict[str, Any],
                outcome: str | None) -> dict[str, tuple[bool, str, str]]:
    failing = [c.get("name", "") for c in readiness.get("failed", [])]
    return {
        "Ready": (False, "InvalidPlan", "; ".join(problems)) if problems else
                 (True, "Reconciling", "the controller is watching this plan"),
        "Tripped": (phase in _TRIPPED, "ThresholdExceeded" if phase in _TRIPPED else "Healthy",
                    phase.value),
        "FailingOver": (phase is Phase.FAILING_OVER, "StepsRunning"
                        if phase is Phase.FAILING_OVER else "NotRunning", phase.value),
        "FailedOver": (phase is Phase.FAILED_OVER, "ServingFromBackup"
                       if phase is Phase.FAILED_OVER else "NotFailedOver", outcome or ""),
        "Degraded": (phase in (Phase.DEGRADED, Phase.FAILED) or bool(failing),
                     "RunFailed" if phase is Phase.FAILED else
                     "BackupNotReady" if failing else
                     "BelowThreshold" if phase is Phase.DEGRADED else "AsExpected",
                     ", ".join(failing) or phase.value),
    }


def build(journal: Journal, plan: str, *, generation: int | None, previous: dict[str, Any],
          problems: list[str] | None = None, now: float) -> dict[str, Any]:
    """The status for `plan` as the journal holds it (or the reasons it is invalid)."""
    problems = problems or []
    st: PlanState | None = journal.plan_state(plan)
    phase = st.phase if st else Phase.HEALTHY
    readiness = st.readiness if st else {}
    runs = journal.runs(plan, limit=1)
    run = journal.active_run(plan) or (runs[0] if runs else None)
    decisions = journal.decisions(plan, limit=1)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase.value,
        "level": st.level if st else None,
        "activeSite": st.active_site if st else None,
        "lastDecision": st.last_decision if st else None,
        "lastDecisionTime": rfc3339(decisions[-1]["at"]) if decisions else None,
        "updatedAt": st.updated_at if st else None,
        "policyState": st.policy if st else {},
        "readiness": {"score": readiness.get("score"),
                      "failing": [f"{c['name']}: {c['detail']}"
                                  for c in readiness.get("failed", [])]} if readiness else {},
    }
    if run is not None:
        status["run"] = {**run.to_json(), "definition": run.steps,
                         "steps": [s.to_json() for s in journal.steps(run.id)]}
    old = {c["type"]: c for c in previous.get("conditions", [])}
    status["conditions"] = []
    for kind, (true, reason, message) in _conditions(
            phase, problems, readiness, run.outcome if run else None).items():
        value = "True" if true else "False"
        before = old.get(kind)
        since = (before["lastTransitionTime"] if before and before.get("status") == value
                 else rfc3339(now))
        status["conditions"].append({"type": kind, "status": value, "reason": reason,
                                     "message": message[:1000], "lastTransitionTime": since})
    return status


_VOLATILE = ("updatedAt", "policyState")  # move every tick; written along, never alone


def changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Worth a write: anything but the per-tick bookkeeping differs."""
    return any(before.get(k) != after.get(k) for k in {*before, *after} - set(_VOLATILE))


def plan_state(status: dict[str, Any], plan: str) -> PlanState | None:
    """The journal's plan state as another replica last wrote it into the status."""
    if not status.get("phase") or status.get("updatedAt") is None:
        return None
    return PlanState(plan, Phase(status["phase"]), status.get("level"),
                     status.get("activeSite"), status.get("lastDecision"),
                     dict(status.get("policyState") or {}), float(status["updatedAt"]), {})


def _step_line(s: dict[str, Any]) -> str:
    target = s.get("targetSeconds")
    took = s.get("sinceDetectionSeconds")
    timing = "" if took is None else f" at {took:.1f} s after detection"
    if target is not None:
        timing += f" (target {target:g} s, {'met' if s.get('met') else 'MISSED'})"
    error = f": {s['error']}" if s.get("error") else ""
    return f"step {s['name']} {s['status']}{timing}, {s.get('attempts', 0)} attempt(s){error}"


def events(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) for each change from `before` to `after`."""
    out: list[tuple[str, str, str]] = []
    if after.get("lastDecision") and after.get("lastDecision") != before.get("lastDecision"):
        out.append(("Normal", "Decision", str(after["lastDecision"])))
    if after.get("phase") != before.get("phase"):
        kind = "Warning" if after.get("phase") in ("Failed", "Degraded") else "Normal"
        out.append((kind, "Phase", f"phase {before.get('phase') or '-'} -> {after['phase']}"))
    run_after = after.get("run") or {}
    run_before = before.get("run") or {}
    seen = ({s["name"]: s["status"] for s in run_before.get("steps", [])}
            if run_before.get("id") == run_after.get("id") else {})
    for s in run_after.get("steps", []):
        if s["status"] != seen.get(s["name"], "pending"):
            reason = "Step" + "".join(p.capitalize() for p in s["status"].split("-"))
            kind = "Warning" if s["status"] == "failed" or s.get("met") is False else "Normal"
            out.append((kind, reason, _step_line(s)))
    return out

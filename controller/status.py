"""The FailoverPlan `status` the operator writes: built from the journal, diffed into Events.

Owns one translation, so the journal (everywhere) and the status (in the cluster) carry the
same record: phase, level, active site, the last decision sentence and when it was made,
readiness, conditions with reasons, and the current (or last) run with every step's
elapsed time against its target, attempts and evidence. The run's step definitions ride
along, so another replica that takes over can adopt the run (`Journal.import_run`) and
continue it without repeating a finished step. What the policy observes is in `policy`
(`PolicyState.observed`): per service its availability over the window and its run of
failures, the services down, the typed decision and a trip in progress, in camelCase and
never the samples themselves, which stay in the journal — so the status's size depends on
the number of services, never on the window or the probe interval, and stays far below
what etcd accepts. A replica that takes over reads the trip and each service's probe
counts back from it (`plan_state`), and its own probes refill the window. The writing
leader's fencing token and identity (`fencingToken`, `fencingHolder`) ride along too: a
status write by a leader whose token is older is refused (`kube.Fencing`).

What `kubectl get fop` shows is the truth: an invalid plan's phase is `Invalid` (it is not
watched; the record's own phase rides along as `planPhase`, so a replica that adopts the
status gets it back), and the Ready condition says False with reason `InvalidPlan` or
`Deleting` (what the deletion waits for) as well as True when the plan is watched. The
spec a plan runs with rides along (`appliedSpec`, `appliedGeneration`): while a run is
active or the plan is failed over, an edit of its sites or backends is held (condition
SpecApplied False, `HeldDuringIncident`), so a failback reverts the objects the failover
changed, on whichever replica.

`events` compares two statuses and says what happened in between (phase changes, new
decisions, step transitions), one Event each; a plan's first status, when it is healthy
and decided so, says nothing worth an Event. A change is worth a write and an Event when
its meaning changes, not its counters: a decision is compared by its typed state
(`tripped`, `still-tripped`, `degraded` ..., `policy.decided`), never by its
sentence, so an outage that goes on costs no write per reconcile.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller.journal import Journal, PlanState, Run
from controller.model import TERMINAL, DecisionState, Phase, StepStatus, Trigger
from controller.plan import FailoverPlan
from controller.policy import PolicyState

CONDITIONS = ("Ready", "Tripped", "Requested", "FailingOver", "FailedOver", "Degraded",
              "SpecApplied")
_TRIPPED = {Phase.TRIPPED, Phase.AWAITING_APPROVAL, Phase.FAILING_OVER, Phase.FAILED_OVER,
            Phase.FAILING_BACK}


def rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(phase: Phase, problems: list[str], readiness: dict[str, Any],
                run: Run | None, deleting: str | None,
                held: str | None) -> dict[str, tuple[bool, str, str]]:
    """Tripped is a threshold trip only: a failover a person requested (a planned one)
    says Requested, with who asked and why, and never ThresholdExceeded."""
    failing = [c.get("name", "") for c in readiness.get("failed", [])]
    incident = phase in _TRIPPED
    requested = incident and run is not None and run.trigger is Trigger.REQUEST
    outcome = run.outcome if run else None
    return {
        "Ready": (False, "InvalidPlan", "; ".join(problems)) if problems else
                 (False, "Deleting", deleting) if deleting else
                 (True, "Reconciling", "the controller is watching this plan"),
        "Tripped": (incident and not requested,
                    "Requested" if requested else "ThresholdExceeded" if incident
                    else "Healthy", run.origin.text() if requested and run else phase.value),
        "Requested": (requested, "Requested" if requested else "NotRequested",
                      run.origin.text() if requested and run else ""),
        "FailingOver": (phase is Phase.FAILING_OVER, "StepsRunning"
                        if phase is Phase.FAILING_OVER else "NotRunning", phase.value),
        "FailedOver": (phase is Phase.FAILED_OVER, "ServingFromBackup"
                       if phase is Phase.FAILED_OVER else "NotFailedOver", outcome or ""),
        "Degraded": (phase in (Phase.DEGRADED, Phase.FAILED) or bool(failing),
                     "RunFailed" if phase is Phase.FAILED else
                     "BackupNotReady" if failing else
                     "BelowThreshold" if phase is Phase.DEGRADED else "AsExpected",
                     ", ".join(failing) or phase.value),
        "SpecApplied": (False, "HeldDuringIncident", held) if held else
                       (False, "InvalidPlan", "; ".join(problems)) if problems else
                       (True, "Applied", "the plan runs with its current spec"),
    }


def progress(steps: list[dict[str, Any]]) -> str:
    """How far a run has got, for `kubectl get fop -o wide`: '3/5 steps, dns-cutover
    running' (what the step under way is doing, or waiting for, by its status)."""
    done = sum(s["status"] in TERMINAL for s in steps)
    now = next((s for s in steps
                if s["status"] not in TERMINAL and s["status"] != StepStatus.PENDING), None)
    under_way = f", {now['name']} {now['status']}" if now else ""
    return f"{done}/{len(steps)} steps{under_way}"


def build(journal: Journal, plan: str, *, generation: int | None, previous: dict[str, Any],
          problems: list[str] | None = None, now: float, deleting: str | None = None,
          token: int | None = None, holder: str | None = None,
          applied: tuple[int | None, dict[str, Any]] | None = None,
          held: str | None = None, watched: FailoverPlan | None = None) -> dict[str, Any]:
    """The status for `plan` as the journal holds it (or the reasons it is invalid), with
    the writing leader's fencing `token` and `holder` when given. `deleting` (what the
    deletion of a plan being deleted waits for) makes Ready False. `applied` is the
    (generation, spec) the plan runs with — kept in `appliedGeneration`/`appliedSpec`
    (carried over from `previous` when not given), so any replica goes on with the spec
    a run started with; `held` says why a newer spec is not applied yet. `watched` is the
    plan as it runs, for what the policy measures against its trigger (the availability
    of the core services, the services down); None for an invalid plan."""
    problems = problems or []
    st: PlanState | None = journal.plan_state(plan)
    phase = st.phase if st else Phase.HEALTHY
    readiness = st.readiness if st else {}
    runs = journal.runs(plan, limit=1)
    run = journal.active_run(plan) or (runs[0] if runs else None)
    decisions = journal.decisions(plan, limit=1)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": Phase.INVALID.value if problems else phase.value,
        "level": st.level if st else None,
        "activeSite": st.active_site if st else None,
        "lastDecision": st.last_decision if st else None,
        "lastDecisionTime": rfc3339(decisions[-1]["at"]) if decisions else None,
        "updatedAt": st.updated_at if st else None,
        "policy": PolicyState.from_json(st.policy).observed(watched, now) if st else {},
        "readiness": {"score": readiness.get("score"),
                      "failing": [f"{c['name']}: {c['detail']}"
                                  for c in readiness.get("failed", [])]} if readiness else {},
    }
    if problems:
        status["planPhase"], status["problems"] = phase.value, problems
    if applied is not None:
        status["appliedGeneration"], status["appliedSpec"] = applied
    elif previous.get("appliedSpec") is not None:
        status["appliedGeneration"] = previous.get("appliedGeneration")
        status["appliedSpec"] = previous["appliedSpec"]
    if token is not None:
        status["fencingToken"], status["fencingHolder"] = token, holder
    if run is not None:
        steps = [s.to_json() for s in journal.steps(run.id)]
        status["run"] = {**run.to_json(), "definition": run.steps, "steps": steps,
                         "progress": progress(steps)}
    old = {c["type"]: c for c in previous.get("conditions", [])}
    status["conditions"] = []
    for kind, (true, reason, message) in _conditions(
            phase, problems, readiness, run, deleting, held).items():
        value = "True" if true else "False"
        before = old.get(kind)
        since = (before["lastTransitionTime"] if before and before.get("status") == value
                 else rfc3339(now))
        status["conditions"].append({"type": kind, "status": value, "reason": reason,
                                     "message": message[:1000], "lastTransitionTime": since})
    return status


_VOLATILE = ("updatedAt", "policy")  # move every tick; written along, never alone
_SAID = ("lastDecision", "lastDecisionTime")  # compared by what the decision says


def meaning(status: dict[str, Any]) -> str | None:
    """What the last decision says, without its counters: its typed state (`tripped`,
    `still-tripped`, `degraded` ...), in `policy`; the sentence is for people."""
    decided = (status.get("policy") or {}).get("decided")
    return None if decided is None else str(decided)


def changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Worth a write: anything but the per-tick bookkeeping differs, or the decision says
    something else (a sentence whose counters moved is written along, never alone)."""
    if meaning(before) != meaning(after):
        return True
    return any(before.get(k) != after.get(k)
               for k in {*before, *after} - {*_VOLATILE, *_SAID})


def plan_state(status: dict[str, Any], plan: str) -> PlanState | None:
    """The journal's plan state as another replica last wrote it into the status (an
    invalid plan's is in `planPhase`), its policy state read back from the observations
    (`PolicyState.from_observed`): the trip, the decision and what the window measured,
    without the samples."""
    phase = status.get("phase")
    if phase == Phase.INVALID.value:
        phase = status.get("planPhase")
    if not phase or status.get("updatedAt") is None:
        return None
    at = float(status["updatedAt"])
    return PlanState(plan, Phase(phase), status.get("level"),
                     status.get("activeSite"), status.get("lastDecision"),
                     PolicyState.from_observed(status.get("policy"), at).to_json(), at, {})


def _step_line(s: dict[str, Any]) -> str:
    target = s.get("targetSeconds")
    took = s.get("sinceDetectionSeconds")
    timing = "" if took is None else f" at {took:.1f} s after detection"
    if target is not None:
        met = s.get("met")  # None: still running, nothing to say yet
        verdict = "" if met is None else ", met" if met else ", MISSED"
        timing += f" (target {target:g} s{verdict})"
    error = f": {s['error']}" if s.get("error") else ""
    return f"step {s['name']} {s['status']}{timing}, {s.get('attempts', 0)} attempt(s){error}"


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def events(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) for each change from `before` to `after`."""
    out: list[tuple[str, str, str]] = []
    if after.get("fencingHolder") and before.get("fencingHolder") and (
            after.get("fencingToken") != before.get("fencingToken")):
        out.append(("Normal", "LeaderChanged",
                    f"{after['fencingHolder']} writes this plan now (fencing token "
                    f"{after.get('fencingToken')}; was {before['fencingHolder']}, "
                    f"{before.get('fencingToken')})"))
    spec_before, spec_after = (_condition(before, "SpecApplied"),
                               _condition(after, "SpecApplied"))
    if spec_after.get("reason") != spec_before.get("reason"):
        if spec_after.get("reason") == "HeldDuringIncident":
            out.append(("Warning", "SpecHeld", str(spec_after.get("message"))))
        elif spec_after.get("reason") == "Applied" and spec_before.get("reason"):
            out.append(("Normal", "SpecApplied", f"generation "
                        f"{after.get('appliedGeneration')} applied"))
    # a plan's first status says nothing an Event would when it is healthy and decided so:
    # a thousand new plans cost no Events (issue 20)
    quiet_start = not before.get("phase") and after.get("phase") == Phase.HEALTHY.value
    if after.get("lastDecision") and meaning(after) != meaning(before) and not (
            quiet_start and meaning(after) in (None, DecisionState.HEALTHY.value)):
        out.append(("Normal", "Decision", str(after["lastDecision"])))
    if after.get("phase") != before.get("phase") and not quiet_start:
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

"""Starting a run: from a pending request (a person's failover or failback), from a trip
(or a trip recorded by a controller that died before it started the run), or from a
clear when the plan fails back automatically. A request that does not fit the plan's
phase is answered with a finished run that says why, and changes nothing. With no run to
start, the plan's phase follows the decision (Healthy or Degraded). A failover whose
steps follow their level's targets has the level's targets audited as it starts.
"""

from __future__ import annotations

import logging
from typing import Any

from controller import notices, policy, targets
from controller.engine.core import Core
from controller.engine.cycle import Refused, Started
from controller.engine.noticing import Notices
from controller.engine.people import People
from controller.engine.store import Store
from controller.failback import revert_steps
from controller.journal import PlanState
from controller.model import Decision, DecisionAction, DecisionState, Phase, Trigger

log = logging.getLogger(__name__)
# a request that does not fit the plan's phase is answered, not run: the reason per phase
_NO_FAILOVER = {Phase.FAILED_OVER: "the plan is already failed over; fail back first",
                Phase.FAILING_BACK: "a failback is running"}
_MAY_TRIP = (Phase.HEALTHY, Phase.DEGRADED, Phase.FAILED, Phase.TRIPPED)
_DEGRADED = (DecisionState.DEGRADED, DecisionState.HELD)


def refusal(kind: str, phase: Phase) -> str | None:
    """Why a request of `kind` does not fit `phase` (None: it fits)."""
    if kind == "failover" and phase in _NO_FAILOVER:
        return f"nothing to fail over: {_NO_FAILOVER[phase]}"
    if kind == "failback" and phase not in (Phase.FAILED_OVER, Phase.FAILED):
        return f"nothing to fail back: plan is {phase.value}"
    return None


class Starter:
    def __init__(self, core: Core, store: Store, notices: Notices, people: People):
        self.core, self.store, self.notices, self.people = core, store, notices, people

    def maybe_start(self, decision: Decision | None) -> None:
        core, st = self.core, self.store.state()
        pol = policy.PolicyState.from_json(st.policy)
        now = core.clock.now()
        req = core.journal.pending_request(core.name)
        if req is not None and self._refused(st, req["kind"], req["actor"], req["reason"],
                                             req["at"], req["id"]):
            req = None  # answered; a trip decided in the same cycle still counts
        if req is not None:
            kind, actor, reason = req["kind"], req["actor"], req["reason"]
            detected, approvals, trigger = req["at"], [actor], Trigger.REQUEST
            # the level asked for (or none); during a trip, the policy's if more severe
            level = req["level"] if kind == "failover" else None
            if pol.tripped and pol.level is not None:
                level = pol.level if level is None else min(pol.level, level)
                pol = policy.PolicyState.from_json({**pol.to_json(), "level": level})
        elif decision is not None and (decision.action is DecisionAction.TRIP
                                       or pol.tripped) and st.phase in _MAY_TRIP:
            # a trip, or one recorded by a controller that died before it started the run
            kind, actor, reason = "failover", "controller", decision.sentence
            detected, approvals, trigger = pol.detected_at or now, [], Trigger.TRIP
            level = pol.level
            st = self.store.save(st, phase=Phase.TRIPPED, level=pol.level)  # before acting
        elif (decision is not None and decision.action is DecisionAction.CLEAR
              and st.phase is Phase.FAILED_OVER and core.plan.spec.automatic_failback):
            kind, actor, reason, detected, approvals = "failback", "controller", \
                decision.sentence, now, []
            trigger, level = Trigger.CLEAR, pol.level
            if self._refused(st, kind, actor, reason, now, None):
                return
        else:
            phase = st.phase
            if phase in (Phase.HEALTHY, Phase.DEGRADED) and decision is not None:
                phase = Phase.DEGRADED if decision.state in _DEGRADED else Phase.HEALTHY
            self.store.save(st, phase=phase)
            return
        # failback also answers a Failed run: it reverts what stayed applied (onFailure:
        # abort leaves earlier steps in place) and returns the plan to watching
        steps = self.failover_steps() if kind == "failover" else revert_steps(
            core.journal, core.name)
        needs_approval = kind == "failover" and (core.plan.spec.mode == "manual" or req)
        run = core.journal.start_run(
            plan=core.name, kind=kind, level=level,
            phase=Phase.FAILING_OVER if kind == "failover" else Phase.FAILING_BACK,
            reason=reason, requested_by=actor, trigger=trigger, detected_at=detected, now=now,
            steps=steps,
            approved=not needs_approval, request_id=req["id"] if req else None,
            holder=core.as_holder)
        core.did.append(Started(run.id, kind, run.origin))
        if kind == "failover":
            targets.audit(core.journal, core.plan, run.id, level, at=now)
        for who in approvals:  # a request is its requester's approval, unless four eyes
            if needs_approval and self.people.refusal(run.id, who) is None:
                core.journal.approve(run_id=run.id, step="", actor=who, at=now)
        if kind == "failover":
            self.store.save(st, policy=policy.start_cooldown(pol, core.plan, now).to_json())
        self.notices.notify(run, notices.started(run))

    def _refused(self, st: PlanState, kind: str, actor: str, reason: str, at: float,
                 request_id: int | None) -> bool:
        """Answer a request that does not fit the plan's phase with a finished run that
        says why (and changes nothing); True when it was."""
        why = refusal(kind, st.phase)
        if why is None:
            return False
        core, now = self.core, self.core.clock.now()
        run = core.journal.start_run(plan=core.name, kind=kind, phase=st.phase, level=None,
                                     reason=reason, requested_by=actor,
                                     trigger=Trigger.REQUEST if request_id is not None
                                     else Trigger.CLEAR, detected_at=at,
                                     now=now, steps=[], approved=True,
                                     holder=core.as_holder, request_id=request_id)
        core.journal.update_run(run.id, phase=st.phase, finished_at=now, outcome=why,
                                holder=core.as_holder)
        core.did.append(Refused(kind, why))
        log.warning("%s: %s request by %s refused: %s", core.name, kind, actor, why)
        return True

    def failover_steps(self) -> list[dict[str, Any]]:
        return [s.model_dump(mode="json", by_alias=True) | {"target": s.target}
                for s in self.core.plan.spec.steps]

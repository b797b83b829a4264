"""The plan's state row (phase, level, active site, last decision, policy, readiness):
read with defaults for a plan never seen, written only when something changed (a quiet
plan costs no I/O), and shown on the phase, level and readiness gauges."""

from __future__ import annotations

from typing import Any

from controller import metrics, policy
from controller.engine.core import Core
from controller.journal import PlanState
from controller.model import Phase


class Store:
    def __init__(self, core: Core):
        self.core = core
        self._stored = False  # the plan's state row exists in the journal
        self._shown: tuple[Any, ...] = ()  # what the phase/level/readiness gauges show

    def state(self) -> PlanState:
        core = self.core
        st = core.journal.plan_state(core.name)
        if st is None:
            st = PlanState(core.name, Phase.HEALTHY, None,
                           core.plan.spec.sites.primary.name, None, {}, core.clock.now(), {})
        else:
            self._stored = True
        return st

    def policy(self) -> policy.PolicyState:
        return policy.PolicyState.from_json(self.state().policy)

    def down(self, now: float) -> dict[str, float]:
        """The services down now and since when (what notices and notify steps name)."""
        return policy.assess(self.core.plan, self.policy(), now).down

    def save(self, st: PlanState, **changes: Any) -> PlanState:
        new = st
        if not self._stored or any(getattr(st, k) != v for k, v in changes.items()):
            new = PlanState(**{**st.__dict__, **changes, "updated_at": self.core.clock.now()})
            self.core.journal.save_plan_state(new)  # nothing new: no write, a quiet plan no I/O
            self._stored = True
        shown = (new.phase, new.level, new.readiness.get("score"))
        if shown != self._shown:  # the gauges move only when what they show does
            self._shown = shown
            name = self.core.name
            for phase in Phase:
                metrics.PHASE.labels(name, phase.value).set(int(phase is new.phase))
            metrics.LEVEL.labels(name).set(new.level or 0)
            if new.readiness:
                metrics.READINESS.labels(name).set(new.readiness.get("score", 0))
        return new

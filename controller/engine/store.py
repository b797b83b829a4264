"""The plan's state row (phase, level, active site, last decision, policy, readiness):
read with defaults for a plan never seen, written only when something changed (a quiet
plan costs no I/O), and shown on the phase, level and readiness gauges.

"Changed" is judged on the values as the journal stores them (JSON): the policy's
history holds tuples that come back from the journal as lists, and a comparison of the
two would call every tick a change — a write, a commit and a status rebuild per quiet
tick (issue 20's profile: most of the operator's steady-state CPU).
"""

from __future__ import annotations

import json
from typing import Any

from controller import metrics, policy
from controller.engine.core import Core
from controller.journal import PlanState
from controller.model import Decision, DecisionState, Phase

_DURABLE = ("phase", "level", "active_site")
"""What a run and a person rely on: written durably. The rest of the row (the policy
window, the decision sentence, readiness) is rebuilt by fresh probes after a crash."""


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

    def quiet_until(self, st: PlanState) -> float | None:
        """Until when (clock time) a cycle without new samples changes nothing for a plan
        in state `st`, or None when one may: the plan is healthy and decided so, nothing
        is tripped, failing or below its floor, every sample in the window passed and it
        has no business signals (their baselines roll with time) — what is left to come
        with time alone is its next readiness check. The operator skips such cycles of a
        thousand quiet plans until a sample arrives (issue 20)."""
        plan = self.core.plan
        pol = policy.PolicyState.from_json(st.policy)
        if (st.phase is not Phase.HEALTHY or pol.decided is not DecisionState.HEALTHY
                or pol.tripped or pol.below_floor_since is not None
                or pol.surge_since is not None or plan.spec.signals
                or "checkedAt" not in st.readiness
                or any(s.failures or s.failing_since is not None
                       or not all(ok for _, ok in s.history) for s in pol.services.values())):
            return None
        return float(st.readiness["checkedAt"]) + plan.spec.readiness_interval

    def save(self, st: PlanState, *, decision: Decision | None = None,
             **changes: Any) -> PlanState:
        """Write the state row with `changes` when they change it (and `decision`, to keep
        in the same transaction, always)."""
        changes = {k: _as_stored(v) for k, v in changes.items()}
        new = st
        if (not self._stored or decision is not None
                or any(getattr(st, k) != v for k, v in changes.items())):
            new = PlanState(**{**st.__dict__, **changes, "updated_at": self.core.clock.now()})
            # nothing new: no write, a quiet plan no I/O; only observations: no fsync
            self.core.journal.save_plan_state(new, decision=decision, durable=any(
                getattr(new, k) != getattr(st, k) for k in _DURABLE))
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


def _as_stored(value: Any) -> Any:
    """`value` as the journal gives it back: JSON (tuples become lists; anything else
    JSON lacks becomes its string, as the journal writes it)."""
    if isinstance(value, dict | list | tuple):
        return json.loads(json.dumps(value, default=str))
    return value

"""Replay a health trace through the same pure policy the controller uses.

`failoverctl simulate PLAN --trace FILE` shows when the plan would have tripped, at which
level and why, so thresholds can be tuned on recorded (or synthetic) incidents before
anyone trusts them. Traces that carry a label ("must trip by T at level L" / "must not
trip") are judged against it; the corpus under tests/traces/ is checked this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller import policy
from controller.model import Decision, DecisionAction
from controller.plan import FailoverPlan
from controller.probes.trace import Trace, ticks


@dataclass
class Replay:
    trace: str
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    trips: list[tuple[float, int | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace, "label": self.label, "passed": not self.problems,
            "problems": self.problems,
            "trips": [{"atSeconds": t, "level": lvl} for t, lvl in self.trips],
            "decisions": [{"atSeconds": t, "state": d.state.value, "action": d.action.value,
                           "level": d.level, "sentence": d.sentence}
                          for t, d in self.decisions],
        }


def replay(plan: FailoverPlan, trace: Trace, *, every: float = 1.0) -> Replay:
    """Feed the trace tick by tick; record each change of decision (not every tick)."""
    out = Replay(trace.name, label=trace.expect.describe() if trace.expect else None)
    state = policy.PolicyState()
    for now, batch in ticks(trace, every, tail=plan.spec.trigger.dwell + every):
        decision, state = policy.evaluate(plan, state, batch, now)
        if decision.action is not DecisionAction.NONE or decision.changed:
            out.decisions.append((now - trace.start, decision))
        if decision.action is DecisionAction.TRIP:
            out.trips.append((now - trace.start, decision.level))
            # a real run starts here; the cooldown keeps a replay as honest as a live loop
            state = policy.start_cooldown(state, plan, now)
    if trace.expect is not None:
        out.problems = trace.expect.verify(out.trips)
    return out

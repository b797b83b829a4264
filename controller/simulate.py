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
    peaks: list[int | None] = field(default_factory=list)  # per trip: its most severe level
    problems: list[str] = field(default_factory=list)
    label: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trace": self.trace, "label": self.label, "passed": not self.problems,
            "problems": self.problems,
            "trips": [{"atSeconds": t, "level": lvl, "peakLevel": peak}
                      for (t, lvl), peak in zip(self.trips, self.peaks, strict=True)],
            "decisions": [{"atSeconds": t, "state": d.state.value, "action": d.action.value,
                           "level": d.level, "sentence": d.sentence}
                          for t, d in self.decisions],
        }


def replay(plan: FailoverPlan, trace: Trace, *, every: float = 1.0) -> Replay:
    """Feed the trace tick by tick, as the live loop saw it (`ticks`: every `every` s and
    at once on news); record each change of decision or of a trip's level (not every
    tick)."""
    out = Replay(trace.name, label=trace.expect.describe() if trace.expect else None)
    state = policy.PolicyState()
    for now, batch in ticks(trace, every, tail=plan.spec.trigger.dwell + every):
        decision, state = policy.evaluate(plan, state, batch, now)
        rose = (state.tripped and bool(out.peaks) and decision.level is not None
                and decision.action is DecisionAction.NONE
                and decision.level < (out.peaks[-1] or 5))
        if decision.action is not DecisionAction.NONE or decision.changed or rose:
            out.decisions.append((now - trace.start, decision))
        if rose:
            out.peaks[-1] = decision.level
        if decision.action is DecisionAction.TRIP:
            out.trips.append((now - trace.start, decision.level))
            out.peaks.append(decision.level)
            # a real run starts here; the cooldown keeps a replay as honest as a live loop
            state = policy.start_cooldown(state, plan, now)
    if trace.expect is not None:
        out.problems = trace.expect.verify(out.trips, out.peaks[0] if out.peaks else None)
    return out

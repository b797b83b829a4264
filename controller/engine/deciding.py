"""Deciding: fold a cycle's samples into the pure policy (`controller.policy`), keep the
decision, and raise a running run's response level when the decision says it is worse.

A wall-clock jump moves the policy's times with it, so durations stay measured. A
decision is written to the journal's decisions when it asks for something or its state
changed (the same state again is not news); the plan's state always shows the newest.
The level only rises during a run; each rise is audited and notified, and so are the
tighter targets it brings to steps that follow their level's (`controller.targets`).
The samples decided on during an incident are recorded (`controller.sample_log`), so
the incident can be exported as a trace and replayed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller import notices, policy, targets
from controller.engine.core import Core
from controller.engine.cycle import Decided
from controller.engine.noticing import Notices
from controller.engine.observing import Observer
from controller.engine.store import Store
from controller.journal import PlanState, Run
from controller.model import Decision, DecisionAction, DecisionState, Sample
from controller.sample_log import SampleLog

log = logging.getLogger(__name__)

Observe = Callable[[Decision, PlanState], dict[str, Any]]
"""What else a cycle keeps with its decision: state row fields by name."""


class Decider:
    def __init__(self, core: Core, store: Store, observer: Observer, notices: Notices):
        self.core, self.store, self.observer, self.notices = core, store, observer, notices
        self.samples = SampleLog(core.journal, core.name)

    def decide(self, samples: list[Sample], *, observe: Observe | None = None
               ) -> tuple[Decision, PlanState]:
        """Fold `samples` into the policy and keep the decision, with what `observe` adds
        to the state row for it (the readiness checks due) in the same write."""
        core = self.core
        st = self.store.state()
        prior = policy.PolicyState.from_json(st.policy)
        if jump := core.clock.stepped():  # durations are measured, not read off the clock
            prior = policy.shift(prior, jump)
            log.warning("%s: the wall clock jumped by %+.1f s; the policy's times moved with "
                        "it", core.name, jump)
            core.journal.audit(at=core.clock.now(), actor="controller", action="clock-step",
                               plan=core.name, detail=f"wall clock jumped {jump:+.1f} s")
        decision, new_policy = policy.evaluate(core.plan, prior, samples, core.clock.now())
        self.observer.measure(samples, new_policy)
        news = decision.action is not DecisionAction.NONE or decision.changed
        self.samples.add(core.plan, samples, core.clock.now(),
                         incident=decision.state is not DecisionState.HEALTHY, news=news)
        if news:
            log.info("%s: %s", core.name, decision.sentence)
        core.did.append(Decided(decision))
        # the decision kept (when news) in the state's transaction: one commit, not two
        st = self.store.save(st, decision=decision if news else None,
                             policy=new_policy.to_json(), last_decision=decision.sentence,
                             **(observe(decision, st) if observe is not None else {}))
        return decision, st

    def escalate(self, run: Run, level: int | None) -> None:
        """Raise the run's level to `level` if that is more severe (a smaller number)."""
        if level is None or (run.level is not None and level >= run.level):
            return
        core = self.core
        core.journal.update_run(run.id, phase=run.phase, level=level, holder=core.as_holder)
        core.journal.audit(at=core.clock.now(), actor="controller", action="escalate",
                           plan=core.name, run_id=run.id,
                           detail=f"level {run.level} -> {level}",
                           keep=(f"level {run.level} -> {level}",))  # read back on replay
        if run.kind == "failover":
            targets.audit(core.journal, core.plan, run.id, level, at=core.clock.now())
        escalated = core.journal.run(run.id)
        assert escalated is not None
        self.notices.notify(escalated, notices.escalated(level))

"""The reconcile cycle: observe, decide, act, record — once per `tick`.

Only the engine acts. The CLI, the operator and the drill runner *request* a failover or
failback (a row in the journal) and watch the plan's state. Each `tick` folds new samples
into the pure policy and records the decision, starts a run when the policy trips (or a
request is pending), and advances the active run step by step until it finishes, waits
for someone, or fails; it returns what it did (`engine.cycle.Cycle`). Everything it does
is in the journal, so a restarted engine continues where the last one stopped and never
repeats a finished step.

`Engine` wires the parts in `controller/engine/` (one concern each, listed there) and
keeps the public surface the CLI, the operator and the drill runner use.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from functools import cached_property, partial
from typing import Any

from controller.backends import Backends
from controller.clock import Clock
from controller.coordination import Coordinator
from controller.engine.core import Core
from controller.engine.cycle import Cycle, StoodBy
from controller.engine.deciding import Decider
from controller.engine.ending import Ender
from controller.engine.lease import Lease
from controller.engine.noticing import Notices
from controller.engine.observing import Observer
from controller.engine.people import People
from controller.engine.running import Runner
from controller.engine.starting import Starter, refusal
from controller.engine.store import Store
from controller.executor import Executor, Spawn, spawn_thread
from controller.fencing import LostLease
from controller.journal import Journal, PlanState
from controller.model import Decision, DecisionAction, Phase, Sample, StepRecord
from controller.outbox import Outbox
from controller.plan import FailoverPlan

__all__ = ["Clock", "Engine"]

log = logging.getLogger(__name__)


def default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Engine:
    def __init__(self, plan: FailoverPlan, journal: Journal, *, backends: Backends | None = None,
                 clock: Clock | None = None, holder: str | None = None,
                 lease_ttl: float = 30.0, backoff: float = 0.5,
                 fence: Callable[[], None] | None = None,
                 token: Callable[[], int] | None = None,
                 coordinator: Coordinator | None = None, spawn: Spawn = spawn_thread,
                 renew_every: float | None = None):
        self.plan, self.journal = plan, journal
        self.backends = backends or Backends(plan, audit=partial(journal.audit, plan=plan.name))
        self.clock = clock or Clock()
        self.holder = holder or default_holder()
        self.lease = Lease(journal, self.clock, plan=plan.name, holder=self.holder,
                           ttl=lease_ttl, fence=fence, token=token, coordinator=coordinator)
        self.core = Core(plan, journal, self.clock, (self.lease.name, self.holder))
        every = renew_every or max(lease_ttl / 4, 0.001)  # renew the lease during a step
        self.executor = Executor(journal, guard=self.lease.guard, token=self.lease.token,
                                 holder=self.holder, clock=self.clock,
                                 save=partial(journal.save_step, holder=self.core.as_holder),
                                 spawn=spawn, backoff=backoff,
                                 renew_every=every, grace=max(min(5.0, every), 0.001),
                                 validity=min(lease_ttl / 2, 2 * every))
        self.store = Store(self.core)
        self.notices = Notices(self.core, self.store, lambda: self.outbox, self.lease.token,
                               secrets=self.backends.secrets)
        self.observer = Observer(self.core, self.store, self.backends)
        self.decider = Decider(self.core, self.store, self.observer, self.notices)
        self.people = People(self.core, self.decider, self.lease.holds)
        self.starter = Starter(self.core, self.store, self.notices, self.people)
        self.ender = Ender(self.core, self.store, self.notices, self.executor, self.backends)
        self.runner = Runner(self.core, self.store, self.notices, self.people, self.ender,
                             self.executor)

    # --- the cycle --------------------------------------------------------------------------

    def tick(self, samples: list[Sample]) -> Cycle:
        """Observe + decide + act once. Safe to call from several processes: only the
        lease holder acts; the others stand by and change nothing."""
        self.core.did = []
        try:
            self.lease.hold()
        except LostLease as exc:
            return self._stood_by(exc)
        run = self.journal.active_run(self.plan.name)  # deciding starts none

        def observe(decision: Decision, st: PlanState) -> dict[str, Any]:
            """The readiness checks while quiet, when due: kept with the decision."""
            if (run is None and decision.action is DecisionAction.NONE
                    and self.observer.readiness_due(st)):
                return {"readiness": self.observer.readiness()}
            return {}

        decision, _ = self.decider.decide(samples, observe=observe)
        if run is not None:
            self.decider.escalate(run, decision.level)
        return self._act(decision)

    def reconcile(self) -> Cycle:
        """Act on what the journal holds (a pending request, an approval, a step a person
        finished) without deciding: start a run if one is asked for, then advance it."""
        self.core.did = []
        return self._act(None)

    def _act(self, decision: Decision | None) -> Cycle:
        """Start a run if the decision or a pending request calls for one, then advance the
        active run as far as it can go; record what was done."""
        try:
            self.lease.hold()  # each step that changes the world is fenced by the executor
            self.notices.wake()  # the lease holder sends what is decided and unsent
            self.ender.catch_up()  # archive finished runs the records store lacks
            for stale in self.journal.supersede(self.plan.name, now=self.clock.now(),
                                                holder=self.core.as_holder):
                log.warning("%s: run %s superseded by a newer finished run; not resumed",
                            self.plan.name, stale)
            if self.journal.active_run(self.plan.name) is None:
                self.starter.maybe_start(decision)
            run = self.journal.active_run(self.plan.name)
            if run is not None:
                self.runner.advance(run)
        except LostLease as exc:
            return self._stood_by(exc)
        return Cycle(self.state(), tuple(self.core.did))

    def _stood_by(self, exc: LostLease) -> Cycle:
        log.debug("%s; standing by", exc)
        return Cycle(self.state(), (*self.core.did, StoodBy(str(exc))))

    # --- people's inputs --------------------------------------------------------------------

    def request(self, kind: str, *, actor: str, reason: str, level: int | None = None) -> int:
        """Ask for a failover or failback; the lease holder starts it on its next cycle.
        `level` sets the response level of a manual failover (for notices)."""
        return self.people.request(kind, actor=actor, reason=reason, level=level)

    def approve(self, run_id: str, *, actor: str, step: str = "") -> None:
        self.people.approve(run_id, actor=actor, step=step)

    def done(self, run_id: str, step: str, *, actor: str) -> StepRecord:
        """A person finished a human (manual) step: record who and when, once."""
        return self.people.done(run_id, step, actor=actor)

    def refusal(self, kind: str, phase: Phase | None = None) -> str | None:
        """Why a request of `kind` does not fit the plan's phase now (None: it fits). Such
        a request is answered with a finished run that says why; nothing changes."""
        return refusal(kind, phase or self.state().phase)

    # --- state, readiness, lease, notices ---------------------------------------------------

    def state(self) -> PlanState:
        return self.store.state()

    def check_readiness(self) -> dict[str, Any]:
        """Run the read-only readiness checks of the backup site and keep the result."""
        return self.observer.check_readiness()

    def holds_lease(self) -> bool:
        return self.lease.holds()

    def release(self) -> None:
        """Give the lease up at once (on exit), so another controller need not wait it out."""
        self.flush_notices()  # still the holder: the last notices go out first
        self.lease.release()

    @cached_property
    def outbox(self) -> Outbox:
        """Where decided notices wait for their notifier, off the step path. Only the
        lease holder sends: a controller that lost the plan leaves its unsent notices to
        the new holder."""
        return Outbox(self.plan.name, self.journal, self.backends.notifier, now=self.clock.now,
                      may_send=self.lease.current)

    def flush_notices(self, timeout: float = 30.0) -> bool:
        """Wait (at most `timeout` s) until the notices decided so far were sent or given
        up; True if none is left. What is left stays pending in the journal."""
        return self.outbox.flush(timeout)

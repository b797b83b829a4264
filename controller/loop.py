"""The reconcile cycle: read desired + observed state, decide, run the next step, record.

Only the engine acts. The CLI, the operator and the drill runner *request* a failover or
failback (a row in the journal) and watch the plan's state. Each `tick` folds new samples
into the pure policy, records the decision, starts a run when the policy trips (or a
request is pending), and advances the active run step by step until it finishes, waits
for an approval, or fails. Everything it does is in the journal, so a restarted engine
continues where the last one stopped and never repeats a finished step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property, partial
from typing import Any

from controller import metrics, notices, policy, readiness
from controller.actions import StepContext, step_from_run
from controller.backends import Backends
from controller.clock import Clock
from controller.coordination import Coordinator
from controller.executor import Executor, Spawn, spawn_thread
from controller.failback import left_behind, may_have_written, revert_steps
from controller.fencing import LostLease
from controller.journal import Journal, PlanState, Run
from controller.model import Decision, Phase, Sample, StepRecord, StepStatus
from controller.notify.outbox import Item, Outbox
from controller.plan import FailoverPlan, Step
from controller.probes.scheduler import ProbeScheduler, targets_from_plan
from controller.secrets import redact

__all__ = ["Clock", "Engine", "observe", "probe_once"]

log = logging.getLogger(__name__)
TERMINAL = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.REVERTED)
# a request that does not fit the plan's phase is answered, not run: the reason per phase
_NO_FAILOVER = {Phase.FAILED_OVER: "the plan is already failed over; fail back first",
                Phase.FAILING_BACK: "a failback is running"}


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
        self.lease_ttl = lease_ttl
        self.fence = fence  # the operator's Kubernetes Lease check; raises LostLease
        self.coordinator = coordinator  # host lock or etcd: who may act across journals
        self._outside_token = token  # the operator's Lease token
        self._token = 0
        self.lease_name = f"plan/{plan.name}"
        self.as_holder = (self.lease_name, self.holder)  # fenced journal writes
        self._stored = False  # the plan's state row exists in the journal
        self._shown: tuple[Any, ...] = ()  # what the phase/level/readiness gauges show
        every = renew_every or max(lease_ttl / 4, 0.001)  # renew the lease during a step
        self.executor = Executor(journal, guard=self.guard, token=self.token,
                                 holder=self.holder, clock=self.clock,
                                 save=partial(journal.save_step, holder=self.as_holder),
                                 spawn=spawn, backoff=backoff,
                                 renew_every=every, grace=max(min(5.0, every), 0.001),
                                 validity=min(lease_ttl / 2, 2 * every))

    # --- fencing ----------------------------------------------------------------------------

    def guard(self) -> None:
        """Before (and while) a step changes the world: raise LostLease unless this engine
        holds the plan's lease and, in the operator, the replicas' Kubernetes Lease."""
        if self.fence is not None:
            self.fence()
        self._hold()

    def token(self) -> int:
        """The fencing token this engine acts under (grows with every change of holder)."""
        return self._outside_token() if self._outside_token is not None else self._token

    def _hold(self) -> None:
        """Hold (take or renew) the coordinator's lease, then the journal's."""
        outside: int | None = None
        if self.coordinator is not None:
            try:
                outside = self.coordinator.acquire(holder=self.holder, ttl=self.lease_ttl)
            except ConnectionError as exc:
                raise LostLease(f"cannot reach {self.coordinator.describe()}: {exc}") from None
            if outside is None:
                raise LostLease(f"another controller holds {self.coordinator.describe()}")
        token = self.journal.acquire_lease(self.lease_name, self.holder, ttl=self.lease_ttl,
                                           now=self.clock.now())
        if token is None:
            if self.coordinator is not None:
                self.coordinator.release(holder=self.holder)
            raise LostLease(f"another controller holds {self.lease_name}")
        self._token = outside if outside is not None else token

    def release(self) -> None:
        """Give the lease up at once (on exit), so another controller need not wait it out."""
        self.flush_notices()  # still the holder: the last notices go out first
        self.journal.release_lease(self.lease_name, self.holder)
        if self.coordinator is not None:
            try:
                self.coordinator.release(holder=self.holder)
            except ConnectionError as exc:  # its lease then simply expires
                log.warning("could not release %s (it expires on its own): %s",
                            self.coordinator.describe(), exc)

    def holds_lease(self) -> bool:
        try:
            self._hold()
        except LostLease:
            return False
        return True

    # --- state ------------------------------------------------------------------------------

    def state(self) -> PlanState:
        st = self.journal.plan_state(self.plan.name)
        if st is None:
            st = PlanState(self.plan.name, Phase.HEALTHY, None,
                           self.plan.spec.sites.primary.name, None, {}, self.clock.now(), {})
        else:
            self._stored = True
        return st

    def _save(self, st: PlanState, **changes: Any) -> PlanState:
        new = st
        if not self._stored or any(getattr(st, k) != v for k, v in changes.items()):
            new = PlanState(**{**st.__dict__, **changes, "updated_at": self.clock.now()})
            self.journal.save_plan_state(new)  # nothing new: no write, a quiet plan no I/O
            self._stored = True
        shown = (new.phase, new.level, new.readiness.get("score"))
        if shown != self._shown:  # the gauges move only when what they show does
            self._shown = shown
            for phase in Phase:
                metrics.PHASE.labels(self.plan.name, phase.value).set(int(phase is new.phase))
            metrics.LEVEL.labels(self.plan.name).set(new.level or 0)
            if new.readiness:
                metrics.READINESS.labels(self.plan.name).set(new.readiness.get("score", 0))
        return new

    # --- the cycle --------------------------------------------------------------------------

    def tick(self, samples: list[Sample]) -> PlanState:
        """Observe + decide + act once. Safe to call from several processes: only the
        lease holder acts; the others return the current state unchanged."""
        if not self.holds_lease():
            return self.state()
        st = self.state()
        prior = policy.PolicyState.from_json(st.policy)
        if jump := self.clock.stepped():  # durations are measured, not read off the clock
            prior = policy.shift(prior, jump)
            log.warning("%s: the wall clock jumped by %+.1f s; the policy's times moved with "
                        "it", self.plan.name, jump)
            self.journal.audit(at=self.clock.now(), actor="controller", action="clock-step",
                               plan=self.plan.name, detail=f"wall clock jumped {jump:+.1f} s")
        decision, new_policy = policy.evaluate(self.plan, prior, samples, self.clock.now())
        self._measure(samples, new_policy)
        self._record(st, decision)
        st = self._save(st, policy=new_policy.to_json(), last_decision=decision.sentence)
        run = self.journal.active_run(self.plan.name)
        if run is not None and decision.level is not None and (
                run.level is None or decision.level < run.level):
            self._escalate(run, decision.level)
        if run is None and decision.action == "none":
            last = st.readiness.get("checkedAt", 0)
            if self.clock.now() - last >= self.plan.spec.readiness_interval:
                self.check_readiness()
        return self.reconcile(decision)

    def check_readiness(self) -> dict[str, Any]:
        """Run the read-only readiness checks of the backup site and keep the result."""
        results = readiness.summary(readiness.checks(self.plan, self.backends,
                                                     now=self.clock.now()))
        results["checkedAt"] = self.clock.now()
        self._save(self.state(), readiness=results)
        if results["failed"]:
            log.warning("%s: backup site readiness %s %%: %s", self.plan.name,
                        results["score"], "; ".join(f"{c['name']}: {c['detail']}"
                                                   for c in results["failed"]))
        return results

    def _measure(self, samples: list[Sample], pol: policy.PolicyState) -> None:
        name = self.plan.name
        for sample in samples:
            if sample.latency is not None:
                metrics.PROBE_LATENCY.labels(name, sample.service).observe(sample.latency)
            if not sample.ok:
                metrics.PROBE_FAILURES.labels(name, sample.service).inc()
        seen = policy.assess(self.plan, pol, self.clock.now())
        metrics.AVAILABILITY.labels(name).set(seen.availability)
        for svc in self.plan.spec.services:
            metrics.SERVICE_DOWN.labels(name, svc.name).set(int(svc.name in seen.down))

    def _escalate(self, run: Run, level: int) -> None:
        """The level only rises during a run; each rise is audited and notified."""
        self.journal.update_run(run.id, phase=run.phase, level=level, holder=self.as_holder)
        self.journal.audit(at=self.clock.now(), actor="controller", action="escalate",
                           plan=self.plan.name, run_id=run.id,
                           detail=f"level {run.level} -> {level}",
                           keep=(f"level {run.level} -> {level}",))  # read back on replay
        escalated = self.journal.run(run.id)
        assert escalated is not None
        self._notify(escalated, notices.escalated(level))

    def reconcile(self, decision: Decision | None = None) -> PlanState:
        """Start a run if the decision or a pending request calls for one, then advance the
        active run as far as it can go."""
        try:
            self._hold()  # each step that changes the world is fenced by the executor
            self._wake_notices()  # the lease holder sends what is decided and unsent
            for stale in self.journal.supersede(self.plan.name, now=self.clock.now(),
                                                holder=self.as_holder):
                log.warning("%s: run %s superseded by a newer finished run; not resumed",
                            self.plan.name, stale)
            if self.journal.active_run(self.plan.name) is None:
                st = self.state()
                self._maybe_start(st, decision, policy.PolicyState.from_json(st.policy))
            run = self.journal.active_run(self.plan.name)
            if run is not None:
                self._advance(run)
        except LostLease as exc:
            log.debug("%s; standing by", exc)
        return self.state()

    def request(self, kind: str, *, actor: str, reason: str, level: int | None = None) -> int:
        """Ask for a failover or failback; the lease holder starts it on its next cycle.
        `level` sets the response level of a manual failover (for notices)."""
        if kind not in ("failover", "failback"):
            raise ValueError(f"unknown request kind {kind!r}; use failover or failback")
        return self.journal.add_request(plan=self.plan.name, kind=kind, actor=actor,
                                        reason=reason, at=self.clock.now(), level=level)

    def approve(self, run_id: str, *, actor: str, step: str = "") -> None:
        allowed = self.plan.spec.approval.approvers
        if allowed and actor not in allowed:
            raise PermissionError(f"{actor} is not an approver of plan {self.plan.name} "
                                  f"(approvers: {', '.join(allowed)})")
        self.journal.approve(run_id=run_id, step=step, actor=actor, at=self.clock.now())

    def _record(self, st: PlanState, decision: Decision) -> None:
        previous = (st.last_decision or "").split(":", 1)[0]  # stored redacted: compare so
        if decision.action != "none" or redact(decision.sentence).split(":", 1)[0] != previous:
            self.journal.record_decision(self.plan.name, decision)
            log.info("%s: %s", self.plan.name, decision.sentence)

    def _maybe_start(self, st: PlanState, decision: Decision | None,
                     pol: policy.PolicyState) -> PlanState:
        now = self.clock.now()
        req = self.journal.pending_request(self.plan.name)
        if req is not None and self._refused(st, req["kind"], req["actor"], req["reason"],
                                             req["at"], req["id"]):
            req = None  # answered; a trip decided in the same cycle still counts
        if req is not None:
            kind, actor, reason = req["kind"], req["actor"], req["reason"]
            detected, approvals = req["at"], [actor]
            if kind == "failover" and req["level"] is not None:
                level = req["level"] if pol.level is None else min(pol.level, req["level"])
                pol = policy.PolicyState.from_json({**pol.to_json(), "level": level})
        elif decision is not None and (decision.action == "trip" or pol.tripped) and \
                st.phase in (Phase.HEALTHY, Phase.DEGRADED, Phase.FAILED, Phase.TRIPPED):
            # a trip, or one recorded by a controller that died before it started the run
            kind, actor, reason = "failover", "controller", decision.sentence
            detected, approvals = pol.detected_at or now, []
            st = self._save(st, phase=Phase.TRIPPED, level=pol.level)  # recorded before acting
        elif (decision is not None and decision.action == "clear"
              and st.phase is Phase.FAILED_OVER and self.plan.spec.automatic_failback):
            kind, actor, reason, detected, approvals = "failback", "controller", \
                decision.sentence, now, []
            if self._refused(st, kind, actor, reason, now, None):
                return st
        else:
            phase = st.phase
            if phase in (Phase.HEALTHY, Phase.DEGRADED) and decision is not None:
                phase = Phase.DEGRADED if decision.sentence.startswith(
                    ("degraded", "thresholds")) else Phase.HEALTHY
            return self._save(st, phase=phase)
        # failback also answers a Failed run: it reverts what stayed applied (onFailure:
        # abort leaves earlier steps in place) and returns the plan to watching
        steps = self._failover_steps() if kind == "failover" else revert_steps(
            self.journal, self.plan.name)
        needs_approval = kind == "failover" and (self.plan.spec.mode == "manual" or req)
        run = self.journal.start_run(
            plan=self.plan.name, kind=kind, level=pol.level,
            phase=Phase.FAILING_OVER if kind == "failover" else Phase.FAILING_BACK,
            reason=reason, requested_by=actor, detected_at=detected, now=now, steps=steps,
            approved=not needs_approval, request_id=req["id"] if req else None,
            holder=self.as_holder)
        for who in approvals:
            if needs_approval and self._may_approve(who):
                self.journal.approve(run_id=run.id, step="", actor=who, at=now)
        if kind == "failover":
            self._save(st, policy=policy.start_cooldown(pol, self.plan, now).to_json())
        self._notify(run, notices.started(kind, reason))
        return self.state()

    def _refused(self, st: PlanState, kind: str, actor: str, reason: str, at: float,
                 request_id: int | None) -> bool:
        """A request that does not fit the plan's phase is answered with a finished run
        that says why (and changes nothing); True when it was."""
        refusal = self.refusal(kind, st.phase)
        if refusal is None:
            return False
        now = self.clock.now()
        run = self.journal.start_run(plan=self.plan.name, kind=kind, phase=st.phase,
                                     level=None, reason=reason, requested_by=actor,
                                     detected_at=at, now=now, steps=[], approved=True,
                                     holder=self.as_holder, request_id=request_id)
        self.journal.update_run(run.id, phase=st.phase, finished_at=now, outcome=refusal,
                                holder=self.as_holder)
        log.warning("%s: %s request by %s refused: %s", self.plan.name, kind, actor, refusal)
        return True

    def refusal(self, kind: str, phase: Phase | None = None) -> str | None:
        """Why a request of `kind` does not fit the plan's phase now (None: it fits). Such
        a request is answered with a finished run that says why; nothing changes."""
        phase = phase or self.state().phase
        if kind == "failover" and phase in _NO_FAILOVER:
            return f"nothing to fail over: {_NO_FAILOVER[phase]}"
        if kind == "failback" and phase not in (Phase.FAILED_OVER, Phase.FAILED):
            return f"nothing to fail back: plan is {phase.value}"
        return None

    def _may_approve(self, actor: str) -> bool:
        allowed = self.plan.spec.approval.approvers
        return not allowed or actor in allowed

    def _failover_steps(self) -> list[dict[str, Any]]:
        return [s.model_dump(mode="json", by_alias=True) | {"target": s.target}
                for s in self.plan.spec.steps]

    # --- advancing a run ---------------------------------------------------------------------

    def _context(self, run: Run) -> StepContext:
        return StepContext(plan=self.plan, run_id=run.id, level=run.level,
                           backends=self.backends,
                           lookup_evidence=lambda r, s: self.journal.step(r, s).evidence)

    def _approvals(self, run_id: str, step: str) -> list[tuple[str, float]]:
        """Approvals that count: by an allowed approver and not older than `expires`."""
        expires = self.plan.spec.approval.expires
        now = self.clock.now()
        return [(who, at) for who, at in self.journal.approvals_at(run_id, step)
                if self._may_approve(who) and (expires is None or now - at <= expires)]

    def _approved(self, run_id: str, step: str, required: int) -> bool:
        return len(self._approvals(run_id, step)) >= required

    def done(self, run_id: str, step: str, *, actor: str) -> StepRecord:
        """A person finished a human (manual) step: record who and when, once."""
        run = self.journal.run(run_id)
        if run is None:
            raise LookupError(f"no run {run_id!r}")
        definitions = {d["name"]: d for d in run.steps}
        if step not in definitions or definitions[step]["action"] != "manual":
            manual = [n for n, d in definitions.items() if d["action"] == "manual"]
            raise LookupError(f"run {run_id} has no human step {step!r} "
                              f"(human steps: {', '.join(manual) or 'none'})")
        rec = self.journal.step(run_id, step)
        if rec.status is StepStatus.SUCCEEDED:
            return rec
        now = self.clock.now()
        self.journal.approve(run_id=run_id, step=step, actor=actor, at=now, action="done")
        if not self.holds_lease():  # the holder closes the step on its next cycle
            return rec
        return self._finish_human(run, step_from_run(definitions[step]), rec, actor, now)

    def _finish_human(self, run: Run, step: Step, rec: StepRecord, actor: str,
                      at: float) -> StepRecord:
        rec.started_at = rec.started_at if rec.started_at is not None else at
        rec.finished_at, rec.approved_by = at, actor
        rec.elapsed_s = round(at - rec.started_at, 6)
        rec.since_detection_s = round(at - run.detected_at, 6)
        rec.met = None if step.target is None else rec.since_detection_s <= step.target
        rec.status, rec.attempts = StepStatus.SUCCEEDED, max(rec.attempts, 1)
        self.journal.save_step(rec, holder=self.as_holder)
        return rec

    def _open_human(self, run: Run, step: Step, rec: StepRecord) -> StepRecord:
        """Start the clock of a human step and, if someone already said done, close it."""
        if rec.started_at is None:
            rec.started_at = self.clock.now()
            rec.status = StepStatus.AWAITING_PERSON
            rec.evidence = {"instructions": step.params.get("instructions", step.description)}
            self.journal.save_step(rec, holder=self.as_holder)
        done = self._approvals(run.id, step.name)
        if done:
            who, at = done[0]
            return self._finish_human(run, step, rec, who, at)
        if (step.target is not None and not rec.evidence.get("escalated")
                and self.clock.now() - run.detected_at > step.target):
            rec.evidence = {**rec.evidence, "escalated": True}
            self.journal.save_step(rec, holder=self.as_holder)
            level = max(1, (run.level or 4) - 1)
            self.journal.audit(at=self.clock.now(), actor="controller", action="overdue",
                               plan=self.plan.name, run_id=run.id,
                               detail=f"human step {step.name} missed its target")
            if run.level is None or level < run.level:
                self._escalate(run, level)
        return rec

    def _advance(self, run: Run) -> None:
        st = self.state()
        if not run.approved:
            if not self._approved(run.id, "", self.plan.spec.approval.required):
                self._wait(run, st, "the run")
                return
            self.journal.update_run(run.id, phase=Phase.FAILING_OVER, approved=True,
                                    holder=self.as_holder)
        running = Phase.FAILING_OVER if run.kind == "failover" else Phase.FAILING_BACK

        said = st.phase is running and run.phase is running

        def going() -> None:  # said once a step runs: a waiting run keeps its phase
            nonlocal said
            if not said:
                self._save(self.state(), phase=running, level=run.level)
                self.journal.update_run(run.id, phase=running, holder=self.as_holder)
                said = True

        definitions = {d["name"]: step_from_run(d) for d in run.steps}
        for rec in self.journal.steps(run.id):  # human steps in parallel open at once
            step = definitions[rec.name]
            if step.parallel and rec.status not in TERMINAL:
                self._open_human(run, step, rec)
        self._notify_steps(run)
        for rec in self.journal.steps(run.id):
            step = definitions[rec.name]
            if rec.status is StepStatus.FAILED and not step.parallel and not (
                    step.on_failure == "continue" or step.action == "notify"):
                # recorded failed, but the run went no further (a crash in between):
                # handle the failure now, never run the steps after it
                self._fail(run, step.name, rec.error or "failed",
                           revert=step.on_failure == "revert")
                return
            if rec.status in TERMINAL or step.parallel:
                continue
            if step.action == "manual":
                if self._open_human(run, step, rec).status is not StepStatus.SUCCEEDED:
                    self._wait(run, self.state(), f"human step {step.name}")
                    return
                continue
            if rec.status is StepStatus.UNKNOWN:
                settled = self.executor.settle(step, rec, detected_at=run.detected_at)
                if settled is None:  # its work still runs: keep the lease, change nothing
                    log.warning("run %s: step %s was cancelled and its work has not "
                                "stopped yet; nothing reverts or proceeds until it does",
                                run.id, step.name)
                    return
                rec = settled
            if rec.status is not StepStatus.FAILED:  # one settled as failed: see below
                if step.approval:
                    approvals = self._approvals(run.id, step.name)
                    if not approvals:
                        rec.status = StepStatus.AWAITING_APPROVAL
                        self.journal.save_step(rec, holder=self.as_holder)
                        self._wait(run, self.state(), f"step {step.name}")
                        return
                    rec.approved_by = ", ".join(who for who, _ in approvals)
                going()
                rec = self.executor.execute(step, rec, self._context(run),
                                            detected_at=run.detected_at)
                if rec.status is StepStatus.UNKNOWN:
                    return  # settled on a later cycle, once its work has stopped
            metrics.STEP_SECONDS.labels(self.plan.name, step.name, rec.status.value).observe(
                rec.since_detection_s or 0)
            if rec.met is False:
                metrics.TARGETS_MISSED.labels(self.plan.name, step.name).inc()
            self._notify_steps(run)
            if rec.status is StepStatus.FAILED:
                if step.on_failure == "continue" or step.action == "notify":
                    continue  # a failed notification never blocks the failover
                self._fail(run, step.name, rec.error or "failed",
                           revert=step.on_failure == "revert")
                return
        self._complete(run)

    def _wait(self, run: Run, st: PlanState, what: str) -> None:
        if (run.phase, st.phase, st.level) == (Phase.AWAITING_APPROVAL,
                                               Phase.AWAITING_APPROVAL, run.level):
            return  # said already: a waiting run costs no write per cycle
        self.journal.update_run(run.id, phase=Phase.AWAITING_APPROVAL, holder=self.as_holder)
        self._save(st, phase=Phase.AWAITING_APPROVAL, level=run.level)
        log.info("run %s awaits approval of %s: failoverctl approve %s", run.id, what, run.id)

    def _fail(self, run: Run, step_name: str, error: str, *, revert: bool) -> None:
        outcome = f"step {step_name} failed: {error}"
        if revert:
            reverted: list[str] = []
            failed: list[str] = []
            left: list[str] = []
            for rec in reversed(self.journal.steps(run.id)):
                if may_have_written(rec.action, rec.status.value, rec.evidence):
                    step = step_from_run(next(d for d in run.steps if d["name"] == rec.name))
                    done = self.executor.revert(step, rec, self._context(run))
                    if done.status is StepStatus.REVERTED:
                        reverted.append(rec.name)
                    elif "revertError" in done.evidence:
                        failed.append(f"{rec.name} ({done.evidence['revertError']})")
                    left += left_behind(done.evidence.get("reverted") or {})
            outcome += f"; reverted: {', '.join(reverted) or 'nothing'}"
            if failed:
                outcome += f"; could not revert: {', '.join(failed)}"
            if left:
                outcome += f"; left as a person changed it: {', '.join(left)}"
        self._notify_steps(run)
        now = self.clock.now()
        self.journal.update_run(run.id, phase=Phase.FAILED, finished_at=now, outcome=outcome,
                                holder=self.as_holder)
        self._end(Phase.FAILED)
        self._notify(run, notices.failed(run.kind, outcome))

    def _complete(self, run: Run) -> None:
        self._notify_steps(run)
        now = self.clock.now()
        recs = self.journal.steps(run.id)
        missed = [r.name for r in recs if r.met is False]
        outcome = "all steps succeeded" + (f"; targets missed or steps failed: "
                                           f"{', '.join(missed)}" if missed else "")
        left = [item for r in recs for item in left_behind(r.evidence)]
        if left:
            outcome += f"; left as a person changed it during the incident: {', '.join(left)}"
        sites = self.plan.spec.sites
        unreverted = [r.name for r in recs if r.status is StepStatus.FAILED]
        if run.kind == "failback" and unreverted:  # every revert was tried; not all worked
            self.journal.update_run(run.id, phase=Phase.FAILED, finished_at=now,
                                    outcome=f"could not revert: {', '.join(unreverted)}; "
                                            f"{outcome}", holder=self.as_holder)
            self._end(Phase.FAILED)
            self._notify(run, notices.failed(run.kind, f"could not revert: "
                                                       f"{', '.join(unreverted)}"))
            return
        self.journal.update_run(run.id, phase=Phase.FAILED_OVER if run.kind == "failover"
                                else Phase.HEALTHY, finished_at=now, outcome=outcome,
                                holder=self.as_holder)
        if run.kind == "failover":
            site = sites.backup.name
            self._save(self.state(), phase=Phase.FAILED_OVER, active_site=site)
        else:
            site = sites.primary.name
            self._end(Phase.HEALTHY, active_site=site)
        self._notify(run, notices.completed(run.kind, outcome, site))

    def _end(self, phase: Phase, **changes: Any) -> None:
        """A run ended back on the primary (failback) or failed: re-arm protection from
        the current samples, and never say Healthy while the primary is failing."""
        st = self.state()
        last = policy.PolicyState.from_json(st.policy)
        if phase is Phase.HEALTHY and policy.assess(self.plan, last, self.clock.now()).degraded:
            phase = Phase.DEGRADED  # the last samples say the primary is failing
        self._save(st, phase=phase, policy=policy.rearm(last).to_json(), **changes)

    # --- notices --------------------------------------------------------------------------

    @cached_property
    def outbox(self) -> Outbox:
        """Where decided notices wait for their notifier, off the step path."""
        return Outbox(self.plan.name, self.journal, self.backends.get, now=self.clock.now,
                      may_send=self._may_send_notices)

    def _may_send_notices(self) -> bool:
        """Only the lease holder sends (read, never renewed, from the outbox's threads): a
        controller that lost the plan leaves its unsent notices to the new holder."""
        lease = self.journal.lease(self.lease_name)
        return bool(lease and lease["holder"] == self.holder
                    and lease["expires_at"] > self.clock.now())

    def flush_notices(self, timeout: float = 30.0) -> bool:
        """Wait (at most `timeout` s) until the notices decided so far were sent or given
        up; True if none is left. What is left stays pending in the journal."""
        return self.outbox.flush(timeout)

    def _notify(self, run: Run, status: str, *, attempted: set[str] | None = None) -> None:
        """Decide the notices of `status` for the routes of the run's level
        (`spec.notifications`, exact level match): once per run, status text and route,
        even across a restart. Each is written to the audit as `notify-pending` (with its
        dedup key and status) and handed to the outbox, which sends it off the step path
        and audits `notify` or `notify-failed`: a notice never delays or fails the run.
        The notice carries the services down now, the estimated recovery and a link to
        the run. `attempted` (the keys decided so far) is updated in place."""
        current = self.journal.run(run.id) or run
        status = redact(status)
        if attempted is None:
            attempted = notices.decided(self.journal.audit_trail(run_id=run.id))
        todo = [(rule, notices.dedup_key(run.id, status, rule))
                for rule in notices.routes(self.plan, current.level)]
        todo = [(rule, key) for rule, key in todo if key not in attempted]
        if not todo:
            return
        now = self.clock.now()
        down = policy.assess(self.plan, policy.PolicyState.from_json(self.state().policy),
                             now).down
        base = notices.compose(self.plan, current, status, steps=self.journal.steps(run.id),
                               down=down, now=now)
        for rule, key in todo:
            attempted.add(key)
            self.journal.audit(at=now, actor="controller", action=notices.PENDING,
                               plan=self.plan.name, run_id=run.id,
                               detail=notices.pending_detail(rule, key, status),
                               keep=(notices.route(rule), notices.tag(key)))
            self.outbox.put(Item(current, rule, key,
                                 replace(base, recipients=tuple(rule.recipients))))

    def _notify_steps(self, run: Run) -> None:
        """One update per finished step, in order: steps this engine just ran, human steps
        closed with `failoverctl done`, and steps recorded just before a restart."""
        current = self.journal.run(run.id) or run
        if not notices.routes(self.plan, current.level):
            return
        attempted = notices.decided(self.journal.audit_trail(run_id=run.id))
        for rec in self.journal.steps(run.id):
            if rec.status in TERMINAL:
                self._notify(current, notices.step_status(rec), attempted=attempted)

    def _wake_notices(self) -> None:
        """On the first cycle under a new lease token (a started or restarted controller,
        a new holder), send what the journal says was never sent; then let the outbox
        go on (it pauses while another controller holds the plan)."""
        token = self.token()
        if self.outbox.token != token:
            self.outbox.token = token
            try:
                self._replay_notices()
            except LostLease:
                raise
            except Exception:  # a notice never stops a failover: said loudly, then on
                log.exception("%s: could not replay the notices left unsent", self.plan.name)
        self.outbox.wake()

    def _replay_notices(self) -> None:
        """Send again what a controller decided and never sent (`notify-pending` with no
        `notify`/`notify-failed`), and decide what it never got to decide (a run written,
        then a crash before its start, level or end notice was): for the active run and
        runs that finished within `notices.REPLAY_WITHIN`. Older ones are given up, in
        the audit, rather than told hours late."""
        trail = self.journal.audit_trail(plan=self.plan.name)
        now = self.clock.now()
        rules = self.plan.spec.notifications
        for row in notices.undelivered(trail):
            parsed = notices.parse_pending(str(row["detail"]))
            run = self.journal.run(str(row["run_id"])) if row["run_id"] else None
            if parsed is None or run is None or parsed[1] in self.outbox.known:
                continue
            where, key, status = parsed
            rule = next((r for r in rules if notices.dedup_key(run.id, status, r) == key),
                        None) or next((r for r in rules if notices.route(r) == where), None)
            stale = run.finished_at is not None and now - run.finished_at > notices.REPLAY_WITHIN
            if rule is None or stale:
                why = ("its route is no longer in the plan" if rule is None else
                       f"its run finished {notices.span(now - (run.finished_at or now))} ago")
                self.journal.audit(at=now, actor="controller", action="notify-failed",
                                   plan=self.plan.name, run_id=run.id,
                                   detail=f"{where} failed: not sent after a restart: {why} "
                                          f"{notices.tag(key)}", keep=(where, notices.tag(key)))
                continue
            down = policy.assess(self.plan, policy.PolicyState.from_json(
                self.state().policy), now).down
            notice = notices.compose(self.plan, run, status, steps=self.journal.steps(run.id),
                                     down=down, now=now)
            self.outbox.put(Item(run, rule, key, replace(
                notice, recipients=tuple(rule.recipients), at=row["at"])))
        decided = notices.decided(trail)
        for run in reversed(self.journal.runs(self.plan.name, limit=3)):
            if run.finished_at is not None and now - run.finished_at > notices.REPLAY_WITHIN:
                continue
            for status in notices.lifecycle(self.plan, run, trail):
                status = redact(status)
                if not any(notices.dedup_key(run.id, status, r) in decided for r in rules):
                    self._notify(run, status, attempted=decided)


def observe(plan: FailoverPlan, backends: Backends) -> ProbeScheduler:
    """A probe scheduler for every service and signal of the plan (start it, drain it)."""
    return ProbeScheduler(targets_from_plan(plan, backends.probe))


def probe_once(plan: FailoverPlan, backends: Backends,
               services: list[str] | None = None) -> list[Sample]:
    """Probe the given services (default: all services and signals) once, concurrently,
    each bounded by its timeout and combined k-of-n like the running scheduler does."""
    targets = targets_from_plan(plan, backends.probe)
    if services is not None:
        targets = [t for t in targets if t.service in services]
    return asyncio.run(ProbeScheduler(targets).run_once())

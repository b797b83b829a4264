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
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from controller import metrics, notices, policy, readiness
from controller.actions import REVERTIBLE, StepContext, step_from_run
from controller.backends import Backends
from controller.executor import Executor, LostLease
from controller.journal import Journal, PlanState, Run
from controller.model import Decision, Phase, Sample, StepRecord, StepStatus
from controller.plan import FailoverPlan, Step
from controller.probes.scheduler import ProbeScheduler, targets_from_plan
from controller.secrets import redact

log = logging.getLogger(__name__)
TERMINAL = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.REVERTED)


def default_holder() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Clock:
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


class Engine:
    def __init__(self, plan: FailoverPlan, journal: Journal, *, backends: Backends | None = None,
                 clock: Clock | None = None, holder: str | None = None,
                 lease_ttl: float = 30.0, backoff: float = 0.5,
                 fence: Callable[[], None] | None = None):
        self.plan, self.journal = plan, journal
        self.backends = backends or Backends(plan, audit=partial(journal.audit, plan=plan.name))
        self.clock = clock or Clock()
        self.holder = holder or default_holder()
        self.lease_ttl = lease_ttl
        self.fence = fence  # the operator's Kubernetes Lease check; raises LostLease
        self.lease_name = f"plan/{plan.name}"
        self.executor = Executor(journal, now=self.clock.now, guard=self.guard,
                                 sleep=self.clock.sleep, backoff=backoff)

    # --- fencing ----------------------------------------------------------------------------

    def guard(self) -> None:
        """Before a step changes the world: raise LostLease unless this engine holds the
        plan's lease and, in the operator, the replicas' Kubernetes Lease read just now."""
        if self.fence is not None:
            self.fence()
        self._hold()

    def _hold(self) -> None:
        """Each cycle: hold (take or renew) the plan's lease in the journal."""
        token = self.journal.acquire_lease(self.lease_name, self.holder, ttl=self.lease_ttl,
                                           now=self.clock.now())
        if token is None:
            raise LostLease(f"another controller holds {self.lease_name}")

    def release(self) -> None:
        """Give the lease up at once (on exit), so another controller need not wait it out."""
        self.journal.release_lease(self.lease_name, self.holder)

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
        return st

    def _save(self, st: PlanState, **changes: Any) -> PlanState:
        new = st
        if any(getattr(st, k) != v for k, v in changes.items()) or self.journal.plan_state(
                self.plan.name) is None:  # nothing new: no write, a quiet plan costs no I/O
            new = PlanState(**{**st.__dict__, **changes, "updated_at": self.clock.now()})
            self.journal.save_plan_state(new)
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
        decision, new_policy = policy.evaluate(self.plan, prior, samples, self.clock.now())
        self._measure(samples, new_policy)
        self._record(st, decision)
        self._save(st, policy=new_policy.to_json(), last_decision=decision.sentence)
        run = self.journal.active_run(self.plan.name)
        if run is not None and decision.level is not None and (
                run.level is None or decision.level < run.level):
            self._escalate(run, decision.level)
        if run is None and decision.action == "none":
            last = self.state().readiness.get("checkedAt", 0)
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
        self.journal.update_run(run.id, phase=run.phase, level=level)
        self.journal.audit(at=self.clock.now(), actor="controller", action="escalate",
                           plan=self.plan.name, run_id=run.id,
                           detail=f"level {run.level} -> {level}")
        escalated = self.journal.run(run.id)
        assert escalated is not None
        self._notify(escalated, f"escalated to level {level}")

    def reconcile(self, decision: Decision | None = None) -> PlanState:
        """Start a run if the decision or a pending request calls for one, then advance the
        active run as far as it can go."""
        try:
            self._hold()  # each step that changes the world is fenced by the executor
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
        previous = (st.last_decision or "").split(":", 1)[0]
        if decision.action != "none" or decision.sentence.split(":", 1)[0] != previous:
            self.journal.record_decision(self.plan.name, decision)
            log.info("%s: %s", self.plan.name, decision.sentence)

    def _maybe_start(self, st: PlanState, decision: Decision | None,
                     pol: policy.PolicyState) -> PlanState:
        now = self.clock.now()
        req = self.journal.pending_request(self.plan.name)
        if req is not None:
            kind, actor, reason = req["kind"], req["actor"], req["reason"]
            detected, approvals = req["at"], [actor]
            if kind == "failover" and req["level"] is not None:
                level = req["level"] if pol.level is None else min(pol.level, req["level"])
                pol = policy.PolicyState.from_json({**pol.to_json(), "level": level})
        elif decision is not None and decision.action == "trip" and st.phase in (
                Phase.HEALTHY, Phase.DEGRADED):
            kind, actor, reason = "failover", "controller", decision.sentence
            detected, approvals = pol.detected_at or now, []
            st = self._save(st, phase=Phase.TRIPPED, level=pol.level)  # recorded before acting
        elif (decision is not None and decision.action == "clear"
              and st.phase is Phase.FAILED_OVER and self.plan.spec.automatic_failback):
            kind, actor, reason, detected, approvals = "failback", "controller", \
                decision.sentence, now, []
        else:
            phase = st.phase
            if phase in (Phase.HEALTHY, Phase.DEGRADED) and decision is not None:
                phase = Phase.DEGRADED if decision.sentence.startswith(
                    ("degraded", "thresholds")) else Phase.HEALTHY
            return self._save(st, phase=phase)
        # failback also answers a Failed run: it reverts what stayed applied (onFailure:
        # abort leaves earlier steps in place) and returns the plan to watching
        if kind == "failback" and st.phase not in (Phase.FAILED_OVER, Phase.FAILED):
            # nothing to fail back from; the request is answered with a finished no-op run
            run = self.journal.start_run(plan=self.plan.name, kind=kind, phase=st.phase,
                                         level=None, reason=reason, requested_by=actor,
                                         detected_at=detected, now=now, steps=[],
                                         approved=True,
                                         request_id=req["id"] if req else None)
            self.journal.update_run(run.id, phase=st.phase, finished_at=now,
                                    outcome=f"nothing to fail back: plan is {st.phase.value}")
            return st
        steps = self._failover_steps() if kind == "failover" else self._failback_steps()
        needs_approval = kind == "failover" and (self.plan.spec.mode == "manual" or req)
        run = self.journal.start_run(
            plan=self.plan.name, kind=kind, level=pol.level,
            phase=Phase.FAILING_OVER if kind == "failover" else Phase.FAILING_BACK,
            reason=reason, requested_by=actor, detected_at=detected, now=now, steps=steps,
            approved=not needs_approval, request_id=req["id"] if req else None)
        for who in approvals:
            if needs_approval and self._may_approve(who):
                self.journal.approve(run_id=run.id, step="", actor=who, at=now)
        if kind == "failover":
            self._save(st, policy=policy.start_cooldown(pol, self.plan, now).to_json())
        self._notify(run, f"{kind} started: {reason}")
        return self.state()

    def _may_approve(self, actor: str) -> bool:
        allowed = self.plan.spec.approval.approvers
        return not allowed or actor in allowed

    def _failover_steps(self) -> list[dict[str, Any]]:
        return [s.model_dump(mode="json", by_alias=True) | {"target": s.target}
                for s in self.plan.spec.steps]

    def _failback_steps(self) -> list[dict[str, Any]]:
        last = self.journal.last_finished_run(self.plan.name, "failover")
        if last is None:
            return []
        steps = []
        for rec in reversed(self.journal.steps(last.id)):
            if rec.action in REVERTIBLE and rec.status is StepStatus.SUCCEEDED:
                steps.append({"name": f"revert-{rec.name}", "action": "revert",
                              "timeout": 600, "retries": 2,
                              "params": {"of": {"run": last.id, "step": rec.name}}})
        return steps

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
        return self._finish_human(run, step_from_run(definitions[step]), rec, actor, now)

    def _finish_human(self, run: Run, step: Step, rec: StepRecord, actor: str,
                      at: float) -> StepRecord:
        rec.started_at = rec.started_at if rec.started_at is not None else at
        rec.finished_at, rec.approved_by = at, actor
        rec.elapsed_s = round(at - rec.started_at, 6)
        rec.since_detection_s = round(at - run.detected_at, 6)
        rec.met = None if step.target is None else rec.since_detection_s <= step.target
        rec.status, rec.attempts = StepStatus.SUCCEEDED, max(rec.attempts, 1)
        self.journal.save_step(rec)
        return rec

    def _open_human(self, run: Run, step: Step, rec: StepRecord) -> StepRecord:
        """Start the clock of a human step and, if someone already said done, close it."""
        if rec.started_at is None:
            rec.started_at = self.clock.now()
            rec.status = StepStatus.AWAITING_PERSON
            rec.evidence = {"instructions": step.params.get("instructions", step.description)}
            self.journal.save_step(rec)
        done = self._approvals(run.id, step.name)
        if done:
            who, at = done[0]
            return self._finish_human(run, step, rec, who, at)
        if (step.target is not None and not rec.evidence.get("escalated")
                and self.clock.now() - run.detected_at > step.target):
            rec.evidence = {**rec.evidence, "escalated": True}
            self.journal.save_step(rec)
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
            self.journal.update_run(run.id, phase=Phase.FAILING_OVER, approved=True)
        running = Phase.FAILING_OVER if run.kind == "failover" else Phase.FAILING_BACK
        self._save(st, phase=running, level=run.level)
        self.journal.update_run(run.id, phase=running)
        definitions = {d["name"]: step_from_run(d) for d in run.steps}
        for rec in self.journal.steps(run.id):  # human steps in parallel open at once
            step = definitions[rec.name]
            if step.parallel and rec.status not in TERMINAL:
                self._open_human(run, step, rec)
        self._notify_steps(run)
        for rec in self.journal.steps(run.id):
            step = definitions[rec.name]
            if rec.status in TERMINAL or step.parallel:
                continue
            if step.action == "manual":
                if self._open_human(run, step, rec).status is not StepStatus.SUCCEEDED:
                    self._wait(run, self.state(), f"human step {step.name}")
                    return
                continue
            if step.approval:
                approvals = self._approvals(run.id, step.name)
                if not approvals:
                    rec.status = StepStatus.AWAITING_APPROVAL
                    self.journal.save_step(rec)
                    self._wait(run, self.state(), f"step {step.name}")
                    return
                rec.approved_by = ", ".join(who for who, _ in approvals)
            rec = self.executor.execute(step, rec, self._context(run),
                                        detected_at=run.detected_at)
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
        self.journal.update_run(run.id, phase=Phase.AWAITING_APPROVAL)
        self._save(st, phase=Phase.AWAITING_APPROVAL, level=run.level)
        log.info("run %s awaits approval of %s: failoverctl approve %s", run.id, what, run.id)

    def _fail(self, run: Run, step_name: str, error: str, *, revert: bool) -> None:
        outcome = f"step {step_name} failed: {error}"
        if revert:
            reverted = []
            for rec in reversed(self.journal.steps(run.id)):
                if rec.action in REVERTIBLE and rec.status in (StepStatus.SUCCEEDED,
                                                               StepStatus.FAILED):
                    step = step_from_run(next(d for d in run.steps if d["name"] == rec.name))
                    done = self.executor.revert(step, rec, self._context(run))
                    if done.status is StepStatus.REVERTED:
                        reverted.append(rec.name)
            outcome += f"; reverted: {', '.join(reverted) or 'nothing'}"
        self._notify_steps(run)
        now = self.clock.now()
        self.journal.update_run(run.id, phase=Phase.FAILED, finished_at=now, outcome=outcome)
        self._save(self.state(), phase=Phase.FAILED)
        self._notify(run, f"{run.kind} FAILED: {outcome}")

    def _complete(self, run: Run) -> None:
        self._notify_steps(run)
        now = self.clock.now()
        recs = self.journal.steps(run.id)
        missed = [r.name for r in recs if r.met is False]
        outcome = "all steps succeeded" + (f"; targets missed or steps failed: "
                                           f"{', '.join(missed)}" if missed else "")
        sites = self.plan.spec.sites
        if run.kind == "failover":
            phase, site = Phase.FAILED_OVER, sites.backup.name
        else:
            phase, site = Phase.HEALTHY, sites.primary.name
        self.journal.update_run(run.id, phase=phase, finished_at=now, outcome=outcome)
        self._save(self.state(), phase=phase, active_site=site)
        self._notify(run, f"{run.kind} complete: {outcome}; active site {site}")

    def _notify(self, run: Run, status: str, *, attempted: set[str] | None = None) -> None:
        """Tell the routes of the run's level (`spec.notifications`, exact level match)
        about `status`: once per run, status text and route, even across a restart (each
        attempt is audited with its dedup key). The notice carries the services down now,
        the estimated recovery and a link to the run. A failed notice is audited as
        `notify-failed` and never blocks or fails the run."""
        current = self.journal.run(run.id) or run
        if attempted is None:
            attempted = notices.attempted(self.journal.audit_trail(run_id=run.id))
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
            route = f"{rule.notifier} -> {', '.join(rule.recipients) or 'default'}"
            try:
                self.backends.get(rule.notifier).send(
                    notice=replace(base, recipients=tuple(rule.recipients)))
                action, detail = "notify", route + notices.within(rule, current, now)
            except Exception as exc:
                error = redact(str(exc)) or type(exc).__name__
                action, detail = "notify-failed", f"{route} failed: {error}"
                log.warning("notice %r via %s failed: %s", redact(status), rule.notifier, error)
            attempted.add(key)
            self.journal.audit(at=self.clock.now(), actor="controller", action=action,
                               plan=self.plan.name, run_id=run.id,
                               detail=f"{detail} {notices.tag(key)}")

    def _notify_steps(self, run: Run) -> None:
        """One update per finished step, in order: steps this engine just ran, human steps
        closed with `failoverctl done`, and steps recorded just before a restart."""
        current = self.journal.run(run.id) or run
        if not notices.routes(self.plan, current.level):
            return
        attempted = notices.attempted(self.journal.audit_trail(run_id=run.id))
        for rec in self.journal.steps(run.id):
            if rec.status in TERMINAL:
                self._notify(current, notices.step_status(rec), attempted=attempted)

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

"""People's inputs: requests for a failover or failback, approvals (of a run or of a
gated step, by an allowed approver, not older than `approval.expires`), and human
(manual) steps, which open with their instructions and close when someone says done.

Every input is a journal row; the lease holder acts on it on its next cycle. A human
step that misses its target raises the run's level once.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.engine.core import Core
from controller.engine.deciding import Decider
from controller.journal import Run
from controller.model import StepRecord, StepStatus
from controller.plan import Step
from controller.registry import step_kind


class People:
    def __init__(self, core: Core, decider: Decider, holds_lease: Callable[[], bool]):
        self.core, self.decider, self.holds_lease = core, decider, holds_lease

    def request(self, kind: str, *, actor: str, reason: str, level: int | None = None) -> int:
        if kind not in ("failover", "failback"):
            raise ValueError(f"unknown request kind {kind!r}; use failover or failback")
        return self.core.journal.add_request(plan=self.core.name, kind=kind, actor=actor,
                                             reason=reason, at=self.core.clock.now(),
                                             level=level)

    def approve(self, run_id: str, *, actor: str, step: str = "") -> None:
        if not self.may_approve(actor):
            raise PermissionError(f"{actor} is not an approver of plan {self.core.name} "
                                  f"(approvers: {', '.join(self._approvers())})")
        self.core.journal.approve(run_id=run_id, step=step, actor=actor,
                                  at=self.core.clock.now())

    def may_approve(self, actor: str) -> bool:
        allowed = self._approvers()
        return not allowed or actor in allowed

    def _approvers(self) -> list[str]:
        return self.core.plan.spec.approval.approvers

    def approvals(self, run_id: str, step: str) -> list[tuple[str, float]]:
        """Approvals that count: by an allowed approver and not older than `expires`."""
        expires = self.core.plan.spec.approval.expires
        now = self.core.clock.now()
        return [(who, at) for who, at in self.core.journal.approvals_at(run_id, step)
                if self.may_approve(who) and (expires is None or now - at <= expires)]

    def approved(self, run_id: str) -> bool:
        """The run itself has the approvals the plan requires."""
        return len(self.approvals(run_id, "")) >= self.core.plan.spec.approval.required

    def done(self, run_id: str, step: str, *, actor: str) -> StepRecord:
        """A person finished a human (manual) step: record who and when, once."""
        journal = self.core.journal
        run = journal.run(run_id)
        if run is None:
            raise LookupError(f"no run {run_id!r}")
        definitions = {d["name"]: d for d in run.steps}
        manual = [n for n, d in definitions.items() if step_kind(d["action"]).waits_for_person]
        if step not in manual:
            raise LookupError(f"run {run_id} has no human step {step!r} "
                              f"(human steps: {', '.join(manual) or 'none'})")
        rec = journal.step(run_id, step)
        if rec.status is StepStatus.SUCCEEDED:
            return rec
        now = self.core.clock.now()
        journal.approve(run_id=run_id, step=step, actor=actor, at=now, action="done")
        if not self.holds_lease():  # the holder closes the step on its next cycle
            return rec
        return self._finish_human(run, Step.model_validate(definitions[step]), rec, actor, now)

    def open_human(self, run: Run, step: Step, rec: StepRecord) -> StepRecord:
        """Start the clock of a human step and, if someone already said done, close it."""
        core = self.core
        if rec.started_at is None:
            rec.started_at = core.clock.now()
            rec.status = StepStatus.AWAITING_PERSON
            rec.evidence = {"instructions": step_kind(step.action).instructions(step)}
            core.journal.save_step(rec, holder=core.as_holder)
        done = self.approvals(run.id, step.name)
        if done:
            who, at = done[0]
            return self._finish_human(run, step, rec, who, at)
        if (step.target is not None and not rec.evidence.get("escalated")
                and core.clock.now() - run.detected_at > step.target):
            rec.evidence = {**rec.evidence, "escalated": True}
            core.journal.save_step(rec, holder=core.as_holder)
            core.journal.audit(at=core.clock.now(), actor="controller", action="overdue",
                               plan=core.name, run_id=run.id,
                               detail=f"human step {step.name} missed its target")
            self.decider.escalate(run, max(1, (run.level or 4) - 1))
        return rec

    def _finish_human(self, run: Run, step: Step, rec: StepRecord, actor: str,
                      at: float) -> StepRecord:
        rec.started_at = rec.started_at if rec.started_at is not None else at
        rec.finished_at, rec.approved_by = at, actor
        rec.elapsed_s = round(at - rec.started_at, 6)
        rec.since_detection_s = round(at - run.detected_at, 6)
        rec.met = None if step.target is None else rec.since_detection_s <= step.target
        rec.status, rec.attempts = StepStatus.SUCCEEDED, max(rec.attempts, 1)
        self.core.journal.save_step(rec, holder=self.core.as_holder)
        return rec

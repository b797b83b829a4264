"""People's inputs: requests for a failover or failback, approvals (of a run or of a
gated step, by an allowed approver, not older than `approval.expires`), human
(manual) steps, which open with their instructions and close when someone says done,
and steps that asked for a person mid-step (`PersonNeeded`: the promote step that cannot
reach the old primary), which go on once someone says done after they asked, and fail
with the state they named when no one has within their wait (`answered`).

Four eyes: with `approval.distinct` (unset: true when the plan's mode is manual) the
person who requested a run may not approve it or its gated steps. An approval refused
(not an approver, or the requester) is answered with a PermissionError naming why and
what to do, and leaves an `approval-refused` audit row; an approval that does not count
(one recorded before the plan changed, the requester's own request) is never counted.
Who the person is, is proven elsewhere: the API server (manifests/deploy/admission-
policy.yaml) or an SSH signature (controller/signing.py).

Every input is a journal row; the lease holder acts on it on its next cycle. A human
step that misses its target raises the run's level once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from controller import signing, targets
from controller.engine.core import Core
from controller.engine.deciding import Decider
from controller.journal import Run
from controller.model import StepRecord, StepStatus
from controller.plan import Step
from controller.steps import step_kind


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
        """Record `actor`'s approval of the run (or of its gated `step`)."""
        refused = self.refusal(run_id, actor, step=step)
        if refused is not None:
            self._refuse(run_id, actor, refused)
        self.core.journal.approve(run_id=run_id, step=step, actor=actor,
                                  at=self.core.clock.now())

    def approve_signed(self, run_id: str, signature: Path, *, step: str = "",
                       claimed: str | None = None) -> str:
        """Record the approval signed in `signature` (controller.signing), by the key's
        principal in `approval.allowedSigners`; returns who approved."""
        core, unproven = self.core, claimed or "unknown signer"
        allowed = core.plan.spec.approval.allowed_signers
        revoked = core.plan.spec.approval.revoked_keys
        if allowed is None:
            self._refuse(run_id, unproven, f"plan {core.name} names no approval.allowedSigners "
                         "to check a signature against: add one, or approve without "
                         "--signature")
        try:
            signed = signing.verify(Path(allowed), signature, plan=core.name, run_id=run_id,
                                    step=step, claimed=claimed,
                                    revoked=Path(revoked) if revoked else None)
        except signing.SignatureRefused as exc:
            self._refuse(run_id, unproven, str(exc))
        refused = self.refusal(run_id, signed.signer, step=step, signed=True)
        if refused is not None:
            self._refuse(run_id, signed.signer, refused)
        now = core.clock.now()
        core.journal.approve(run_id=run_id, step=step, actor=signed.signer, at=now)
        core.journal.audit(at=now, actor=signed.signer, action="approval-proven",
                           plan=core.name, run_id=run_id, detail=signed.proof())
        return signed.signer

    def _refuse(self, run_id: str, actor: str, why: str) -> NoReturn:
        core = self.core
        core.journal.audit(at=core.clock.now(), actor=actor, action="approval-refused",
                           plan=core.name, run_id=run_id, detail=why)
        raise PermissionError(why)

    def may_approve(self, actor: str) -> bool:
        allowed = self._approvers()
        return not allowed or actor in allowed

    def refusal(self, run_id: str, actor: str, *, step: str = "",
                signed: bool = False) -> str | None:
        """Why `actor` may not approve run `run_id` (None: they may); `signed`: their
        approval is proven by a signature (controller.signing)."""
        name = self.core.name
        if not signed and self.core.plan.spec.approval.allowed_signers is not None:
            return (f"plan {name} takes only signed approvals (approval.allowedSigners): "
                    f"approve with failoverctl approve {run_id}"
                    f"{' --step ' + step if step else ''} --signature FILE, made by: "
                    f"{signing.how_to_sign(name, run_id, step)}")
        if not self.may_approve(actor):
            return (f"{actor} is not an approver of plan {name} (approvers: "
                    f"{', '.join(self._approvers())}); ask one of them")
        if actor == self._requester(run_id):
            others = [a for a in self._approvers() if a != actor]
            return (f"{actor} requested run {run_id} and may not also approve it: plan "
                    f"{name} needs a second person (four eyes, approval.distinct); ask "
                    f"{'one of ' + ', '.join(others) if others else 'another approver'}")
        return None

    def _requester(self, run_id: str) -> str | None:
        """Who may not approve the run under four eyes (`approval.distinct`; unset: true
        when the plan's mode is manual); None when anyone may."""
        distinct = self.core.plan.spec.approval.distinct
        if not (self.core.plan.spec.mode == "manual" if distinct is None else distinct):
            return None
        run = self.core.journal.run(run_id)
        return None if run is None else run.requested_by

    def _approvers(self) -> list[str]:
        return self.core.plan.spec.approval.approvers

    def approvals(self, run_id: str, step: str) -> list[tuple[str, float]]:
        """Approvals that count: by an allowed approver other than the requester (four
        eyes), not older than `expires`."""
        requester = self._requester(run_id)
        return [(who, at) for who, at in self._fresh(run_id, step) if who != requester]

    def _fresh(self, run_id: str, step: str) -> list[tuple[str, float]]:
        """Inputs (approvals, or done for a human step) by an allowed approver, not older
        than `expires`."""
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
        asking = [r.name for r in journal.steps(run_id)
                  if r.status is StepStatus.AWAITING_PERSON and r.name not in manual]
        if step not in manual and step not in asking:
            raise LookupError(f"run {run_id} has no human step {step!r} "
                              f"(human steps: {', '.join(manual) or 'none'}; steps waiting "
                              f"for a person now: {', '.join(asking) or 'none'})")
        rec = journal.step(run_id, step)
        if rec.status is StepStatus.SUCCEEDED:
            return rec
        now = self.core.clock.now()
        journal.approve(run_id=run_id, step=step, actor=actor, at=now, action="done")
        if step in asking or not self.holds_lease():  # the holder goes on, next cycle
            return rec
        held = targets.held(Step.model_validate(definitions[step]), self.core.plan, run.level)
        return self._finish_human(run, held, rec, actor, now)

    def open_human(self, run: Run, step: Step, rec: StepRecord) -> StepRecord:
        """Start the clock of a human step and, if someone already said done, close it."""
        core = self.core
        if rec.started_at is None:
            rec.started_at = core.clock.now()
            rec.status = StepStatus.AWAITING_PERSON
            rec.evidence = {"instructions": step_kind(step.action).instructions(step)}
            core.journal.save_step(rec, holder=core.as_holder)
        done = self._fresh(run.id, step.name)  # the requester may say done
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

    def answered(self, run: Run, step: Step, rec: StepRecord) -> StepRecord:
        """A step that asked for a person mid-step (`controller.steps.manual.PersonNeeded`):
        with a done said since it asked, running again with who and when in
        `evidence.person` (its next attempt goes on from there); past its wait, failed
        with the state it named (audited); else still waiting, nothing written."""
        core = self.core
        asked = rec.evidence.get("person") or {}
        said = [(who, at) for who, at in self._fresh(run.id, step.name)
                if at >= asked.get("askedAt", 0.0)]
        now = core.clock.now()
        if said:
            who, at = said[0]
            rec.status, rec.error = StepStatus.RUNNING, None
            rec.evidence = {**rec.evidence,
                            "person": {**asked, "confirmedBy": who, "confirmedAt": at}}
        elif now > asked.get("until", now):
            rec.status, rec.error = StepStatus.FAILED, str(asked.get("expired"))
            rec.finished_at, rec.met = now, False
            rec.elapsed_s = round(now - (rec.started_at or now), 6)
            rec.since_detection_s = round(now - run.detected_at, 6)
            core.journal.audit(at=now, actor="controller", action="unanswered",
                               plan=core.name, run_id=run.id,
                               detail=f"step {step.name}: {rec.error}")
        else:
            return rec
        core.journal.save_step(rec, holder=core.as_holder)
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

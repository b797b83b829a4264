"""Running a run: step by step, in order, as far as it can go this cycle, under the
executor (fenced, cancellable, retried). A run stops at an approval it lacks (of the
run, or of a gated step) and at a human step nobody has said done yet: phase
AwaitingApproval, with what it waits for in the cycle's events; so does a step that asked
for a person mid-step (`PersonNeeded`), until someone says done. A step whose work was
cancelled but has not stopped holds everything until it has. A failed step fails the
run (and reverts it, when its step says so) unless it may fail (`onFailure: continue`,
notifications). A restarted engine continues where the journal says, never repeating a
finished step. A step that follows its level's targets (`levelTarget`) is held to the
tighter of its own and the run's level's as it is now (`controller.targets`).
"""

from __future__ import annotations

import logging

from controller import metrics, targets
from controller.engine.core import Core
from controller.engine.cycle import Ran, WaitFor, Waiting
from controller.engine.ending import Ender
from controller.engine.noticing import Notices
from controller.engine.people import People
from controller.engine.store import Store
from controller.executor import Executor
from controller.journal import PlanState, Run
from controller.model import TERMINAL, Phase, StepStatus
from controller.plan import Step
from controller.steps import step_kind

log = logging.getLogger(__name__)


def _may_fail(step: Step) -> bool:
    return step.on_failure == "continue" or step_kind(step.action).continues_on_failure


class Runner:
    def __init__(self, core: Core, store: Store, notices: Notices, people: People,
                 ender: Ender, executor: Executor):
        self.core, self.store, self.notices, self.people = core, store, notices, people
        self.ender, self.executor = ender, executor

    def advance(self, run: Run) -> None:
        core = self.core
        st = self.store.state()
        if not run.approved:
            if not self.people.approved(run.id):
                self._wait(run, st, WaitFor.APPROVAL)
                return
            core.journal.update_run(run.id, phase=Phase.FAILING_OVER, approved=True,
                                    holder=core.as_holder)
        running = Phase.FAILING_OVER if run.kind == "failover" else Phase.FAILING_BACK

        said = st.phase is running and run.phase is running

        def going() -> None:  # said once a step runs: a waiting run keeps its phase
            nonlocal said
            if not said:
                self.store.save(self.store.state(), phase=running, level=run.level)
                core.journal.update_run(run.id, phase=running, holder=core.as_holder)
                said = True

        definitions = {d["name"]: self._held(Step.model_validate(d), run) for d in run.steps}
        for rec in core.journal.steps(run.id):  # human steps in parallel open at once
            step = definitions[rec.name]
            if step.parallel and rec.status not in TERMINAL:
                self.people.open_human(run, step, rec)
        self.notices.steps(run)
        records = core.journal.steps(run.id)
        reverted = [rec for rec in records if rec.status is StepStatus.REVERTED]
        if reverted:
            # only a failed run reverts: its holder stopped mid-revert (a crash, a lost
            # lease). Finish reverting what may still have written, then fail the run.
            failed = next((rec for rec in reverted if rec.error), reverted[0])
            self.ender.fail(run, failed.name, failed.error or "failed", revert=True)
            return
        for rec in records:
            step = definitions[rec.name]
            if rec.status is StepStatus.FAILED and not step.parallel and not _may_fail(step):
                # recorded failed, but the run went no further (a crash in between):
                # handle the failure now, never run the steps after it
                self.ender.fail(run, step.name, rec.error or "failed",
                                revert=step.on_failure == "revert")
                return
            if rec.status in TERMINAL or step.parallel:
                continue
            if step_kind(step.action).waits_for_person:
                if self.people.open_human(run, step, rec).status is not StepStatus.SUCCEEDED:
                    self._wait(run, self.store.state(), WaitFor.PERSON, step.name)
                    return
                continue
            if rec.status is StepStatus.AWAITING_PERSON:  # the step asked for a person
                rec = self.people.answered(run, step, rec)
                if rec.status is StepStatus.AWAITING_PERSON:
                    self._wait(run, self.store.state(), WaitFor.PERSON, step.name)
                    return
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
                    approvals = self.people.approvals(run.id, step.name)
                    if not approvals:
                        rec.status = StepStatus.AWAITING_APPROVAL
                        core.journal.save_step(rec, holder=core.as_holder)
                        self._wait(run, self.store.state(), WaitFor.APPROVAL, step.name)
                        return
                    rec.approved_by = ", ".join(who for who, _ in approvals)
                going()
                rec = self.executor.execute(step, rec, self.ender.context(run),
                                            detected_at=run.detected_at)
                if rec.status is StepStatus.UNKNOWN:
                    return  # settled on a later cycle, once its work has stopped
                if rec.status is StepStatus.AWAITING_PERSON:  # goes on once one says done
                    self._wait(run, self.store.state(), WaitFor.PERSON, step.name)
                    return
                core.did.append(Ran(run.id, step.name, rec.status))
            metrics.STEP_SECONDS.labels(core.name, step.name, rec.status.value).observe(
                rec.since_detection_s or 0)
            if rec.met is False:
                metrics.TARGETS_MISSED.labels(core.name, step.name).inc()
            self.notices.steps(run)
            if rec.status is StepStatus.FAILED:
                if _may_fail(step):
                    continue  # a failed notification never blocks the failover
                self.ender.fail(run, step.name, rec.error or "failed",
                                revert=step.on_failure == "revert")
                return
        self.ender.complete(run)

    def _held(self, step: Step, run: Run) -> Step:
        """`step` with the target it is held to at the run's level now."""
        return targets.held(step, self.core.plan, run.level)

    def _wait(self, run: Run, st: PlanState, on: WaitFor, step: str = "") -> None:
        waiting = Waiting(run.id, on, step)
        self.core.did.append(waiting)
        if (run.phase, st.phase, st.level) == (Phase.AWAITING_APPROVAL,
                                               Phase.AWAITING_APPROVAL, run.level):
            return  # said already: a waiting run costs no write per cycle
        self.core.journal.update_run(run.id, phase=Phase.AWAITING_APPROVAL,
                                     holder=self.core.as_holder)
        self.store.save(st, phase=Phase.AWAITING_APPROVAL, level=run.level)
        what = "a person to finish step" if on is WaitFor.PERSON else "approval of"
        log.info("run %s waits for %s %s: %s", run.id, what, step or "the run",
                 waiting.command())

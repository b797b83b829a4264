"""Ending a run: complete (FailedOver, or Healthy after a failback) or fail, reverting
what the failed run applied when its step says `onFailure: revert`. The outcome says
what was reverted, what could not be, and what a person changed meanwhile. A run that
ends back on the primary re-arms protection from the samples that come next, and the
plan never says Healthy while the last samples say the primary is failing.

When the plan keeps records (`spec.records`), an ended run is archived at once, after its
end's notices are decided (`controller.records.archive.Archiver`); a store that cannot be
reached leaves it for `catch_up`, which the engine calls every cycle, and never changes
how the run ended.
"""

from __future__ import annotations

from typing import Any

from controller import notices, policy
from controller.backends import Backends
from controller.engine.core import Core
from controller.engine.cycle import Ended
from controller.engine.noticing import Notices
from controller.engine.store import Store
from controller.executor import Executor
from controller.failback import left_behind, may_have_written
from controller.journal import Run
from controller.model import Phase, StepStatus
from controller.plan import Step
from controller.records.archive import Archiver
from controller.steps import StepContext


class Ender:
    def __init__(self, core: Core, store: Store, notices: Notices, executor: Executor,
                 backends: Backends):
        self.core, self.store, self.notices = core, store, notices
        self.executor, self.backends = executor, backends
        self.archiver = Archiver(core.plan.name, core.plan.spec.records, core.journal,
                                 core.clock.now, secrets=backends.secrets)

    def catch_up(self) -> None:
        """Archive, when due, the finished runs the records store does not have yet."""
        self.archiver.catch_up()

    def context(self, run: Run) -> StepContext:
        journal = self.core.journal
        return StepContext(plan=self.core.plan, run_id=run.id, level=run.level,
                           down=tuple(self.store.down(self.core.clock.now())),
                           backends=self.backends,
                           lookup_evidence=lambda r, s: journal.step(r, s).evidence)

    def fail(self, run: Run, step_name: str, error: str, *, revert: bool) -> None:
        outcome = f"step {step_name} failed: {error}"
        if revert:
            outcome += self._revert(run)
        self._close(run, Phase.FAILED, outcome)
        self._end(Phase.FAILED)
        self.notices.notify(run, notices.failed(run.kind, outcome))
        self.archiver.ended()

    def _revert(self, run: Run) -> str:
        """Revert, newest first, every step that may have written; say what happened."""
        reverted: list[str] = []
        failed: list[str] = []
        left: list[str] = []
        for rec in reversed(self.core.journal.steps(run.id)):
            if may_have_written(rec.action, rec.status.value, rec.evidence):
                step = Step.model_validate(next(d for d in run.steps if d["name"] == rec.name))
                done = self.executor.revert(step, rec, self.context(run))
                if done.status is StepStatus.REVERTED:
                    reverted.append(rec.name)
                elif "revertError" in done.evidence:
                    failed.append(f"{rec.name} ({done.evidence['revertError']})")
                left += left_behind(done.evidence.get("reverted") or {})
        said = f"; reverted: {', '.join(reverted) or 'nothing'}"
        if failed:
            said += f"; could not revert: {', '.join(failed)}"
        if left:
            said += f"; left as a person changed it: {', '.join(left)}"
        return said

    def complete(self, run: Run) -> None:
        recs = self.core.journal.steps(run.id)
        missed = [r.name for r in recs if r.met is False]
        outcome = "all steps succeeded" + (f"; targets missed or steps failed: "
                                           f"{', '.join(missed)}" if missed else "")
        left = [item for r in recs for item in left_behind(r.evidence)]
        if left:
            outcome += f"; left as a person changed it during the incident: {', '.join(left)}"
        sites = self.core.plan.spec.sites
        unreverted = [r.name for r in recs if r.status is StepStatus.FAILED]
        if run.kind == "failback" and unreverted:  # every revert was tried; not all worked
            could_not = f"could not revert: {', '.join(unreverted)}"
            self._close(run, Phase.FAILED, f"{could_not}; {outcome}")
            self._end(Phase.FAILED)
            self.notices.notify(run, notices.failed(run.kind, could_not))
            self.archiver.ended()
            return
        if run.kind == "failover":
            self._close(run, Phase.FAILED_OVER, outcome)
            site = sites.backup.name
            self.store.save(self.store.state(), phase=Phase.FAILED_OVER, active_site=site)
        else:
            self._close(run, Phase.HEALTHY, outcome)
            site = sites.primary.name
            self._end(Phase.HEALTHY, active_site=site)
        self.notices.notify(run, notices.completed(run.kind, outcome, site))
        self.archiver.ended()

    def _close(self, run: Run, phase: Phase, outcome: str) -> None:
        """Step notices first, then the run's end in the journal."""
        self.notices.steps(run)
        core = self.core
        core.journal.update_run(run.id, phase=phase, finished_at=core.clock.now(),
                                outcome=outcome, holder=core.as_holder)
        core.did.append(Ended(run.id, phase, outcome))

    def _end(self, phase: Phase, **changes: Any) -> None:
        """A run ended back on the primary (failback) or failed: re-arm protection from
        the current samples, and never say Healthy while the primary is failing."""
        core, st = self.core, self.store.state()
        last = policy.PolicyState.from_json(st.policy)
        if phase is Phase.HEALTHY and policy.assess(core.plan, last, core.clock.now()).degraded:
            phase = Phase.DEGRADED  # the last samples say the primary is failing
        self.store.save(st, phase=phase, policy=policy.rearm(last).to_json(), **changes)

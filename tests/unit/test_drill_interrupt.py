"""A drill stopped by a signal leaves nothing open in the journal, wherever the signal
lands — also between two saves of a step's record (after the original state was saved,
before the attempt is counted), where the executor cannot record the step itself: the
run is closed as Failed and every step it left `running` is closed as `failed`, saying
the drill was interrupted (`status` never shows work going on in a world that is gone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.drill.runner import Interrupted, MemorySiteFault, run_drill
from controller.executor import Executor
from controller.journal import Journal
from controller.model import Phase, StepStatus
from tests.unit.test_monitoring_metrics import example_plan


class SandboxSiteFault(MemorySiteFault):
    cleanup = False  # like the sandbox: its owner tears the world down


def interrupt_when_counting(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    count = Executor._count

    def _count(self: Executor, rec: Any) -> None:
        count(self, rec)
        if rec.name == step:
            raise Interrupted("SIGTERM")  # as the signal handler does, between two saves

    monkeypatch.setattr(Executor, "_count", _count)


@pytest.mark.parametrize("fault", [SandboxSiteFault, MemorySiteFault])
def test_a_signal_between_two_saves_of_a_step_leaves_no_step_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: type[MemorySiteFault]) -> None:
    plan = example_plan(tmp_path)
    interrupt_when_counting(monkeypatch, "dns-cutover")
    journal = Journal(tmp_path / "journal.db")
    try:
        with pytest.raises(Interrupted):
            run_drill(plan, journal, tmp_path / "out", echo=None, fault=fault(plan))
        [failover] = [r for r in journal.runs(plan.name) if r.kind == "failover"]
        steps = {s.name: s for s in journal.steps(failover.id)}
    finally:
        journal.close()
    assert failover.phase is Phase.FAILED and "interrupted by SIGTERM" in failover.outcome
    assert not [s.name for s in steps.values() if s.status is StepStatus.RUNNING]
    cut = steps["dns-cutover"]
    assert cut.status in (StepStatus.FAILED, StepStatus.REVERTED), cut
    assert "interrupted by SIGTERM" in (cut.error or ""), cut
    assert cut.finished_at is not None

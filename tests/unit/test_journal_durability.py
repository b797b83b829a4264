"""Which journal writes wait for the disk (issue 20): a run, a step and a lease taken from
another holder are on disk when their transaction commits (synchronous=FULL); an
observation a fresh probe rebuilds — the policy window and decision, a plan's first
lease or its renewal, a uid binding — is committed without an fsync, so a thousand quiet
plans cost no fsync per sample. Each statement the journal runs is recorded with the
connection's synchronous level as it ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from controller.journal import Journal, PlanState
from controller.model import Decision, DecisionState, Phase, StepStatus

FULL, NORMAL = 2, 1


@pytest.fixture
def commits(journal: Journal) -> Callable[[Callable[[], object]], list[int]]:
    """The synchronous level of each COMMIT that `write` made."""

    def levels(write: Callable[[], object]) -> list[int]:
        seen: list[str] = []
        level = int(journal._db.execute("PRAGMA synchronous").fetchone()[0])
        journal._db.set_trace_callback(seen.append)
        try:
            write()
        finally:
            journal._db.set_trace_callback(None)
        out: list[int] = []
        for sql in seen:
            if sql.startswith("PRAGMA synchronous="):
                said = sql.split("=")[1]
                level = NORMAL if said == "NORMAL" else int(said)
            elif sql == "COMMIT":
                out.append(level)
        return out

    return levels


def state(**changes: object) -> PlanState:
    return replace(PlanState("shop", Phase.HEALTHY, None, "dc-a", "healthy", {}, 1.0, {}),
                   **changes)


def test_observations_are_committed_without_an_fsync(
        journal: Journal, commits: Callable[[Callable[[], object]], list[int]]) -> None:
    assert commits(lambda: journal.save_plan_state(state(), durable=False)) == [NORMAL]
    assert commits(lambda: journal.record_decision("shop", Decision(
        DecisionState.HEALTHY, None, "healthy", 2.0))) == [NORMAL]
    assert commits(lambda: journal.bind_plan_uid("shop", "uid-1")) == [NORMAL]
    first = commits(lambda: journal.acquire_lease("plan/shop", "r1", ttl=30, now=10.0))
    renewal = commits(lambda: journal.acquire_lease("plan/shop", "r1", ttl=30, now=30.0))
    assert first == renewal == [NORMAL]
    # each read back as written
    assert journal.plan_state("shop") == state()
    assert journal.plan_uid("shop") == "uid-1"
    assert journal.lease("plan/shop")["expires_at"] == 60.0


def test_runs_steps_a_phase_and_a_lease_taken_over_wait_for_the_disk(
        journal: Journal, commits: Callable[[Callable[[], object]], list[int]]) -> None:
    journal.save_plan_state(state(), durable=False)  # the next durable one syncs all the same
    assert commits(lambda: journal.save_plan_state(state(phase=Phase.TRIPPED))) == [FULL]
    run = journal.start_run(plan="shop", kind="failover", phase=Phase.FAILING_OVER, level=1,
                            reason="tripped", requested_by="controller", detected_at=1.0,
                            now=1.0, steps=[{"name": "redirect", "action": "traffic"}],
                            approved=True)
    step = journal.step(run.id, "redirect")
    assert commits(lambda: journal.save_step(replace(
        step, status=StepStatus.RUNNING, started_at=2.0))) == [FULL]
    journal.acquire_lease("plan/shop", "r1", ttl=30, now=10.0)
    taken = commits(lambda: journal.acquire_lease("plan/shop", "r2", ttl=30, now=100.0))
    assert taken == [FULL]
    assert journal.lease("plan/shop")["holder"] == "r2"


def test_a_relaxed_connection_is_left_as_it_was(journal: Journal) -> None:
    journal._db.execute("PRAGMA synchronous=OFF")  # e.g. the simulation's
    journal.save_plan_state(state(), durable=False)
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 0

"""The journal remembers the reads a cycle repeats — a plan's state row and its active
run (issue 20: ~20 reads per reconcile of a new plan, the journal lock the workers
waited on) — and never answers one with what a commit replaced: its own writes, a step
recorded from another thread, another connection's commit (the CLI on the same file)."""

from __future__ import annotations

import time
from pathlib import Path

from controller.journal import Journal, PlanState
from controller.model import Phase


def state(phase: Phase = Phase.HEALTHY) -> PlanState:
    return PlanState("shop", phase, None, "dc-a", None, {"decided": "healthy"}, time.time(),
                     {})


def statements(journal: Journal, read: list[str]) -> None:
    journal._db.set_trace_callback(
        lambda sql: read.append(sql) if sql.startswith("SELECT") else None)


def test_a_repeated_read_is_not_read_again_until_a_write_may_change_it(
        journal: Journal) -> None:
    journal.save_plan_state(state())
    run = journal.start_run(plan="shop", kind="failover", phase=Phase.FAILING_OVER, level=1,
                            reason="r", requested_by="controller", detected_at=1.0,
                            now=time.time(), steps=[{"name": "s", "action": "manual"}],
                            approved=True)
    read: list[str] = []
    statements(journal, read)
    for _ in range(5):
        assert journal.plan_state("shop") == journal.plan_state("shop")
        active = journal.active_run("shop")
        assert active is not None and active.id == run.id
    assert len(read) == 2  # one of each, then remembered
    journal.audit(at=1.0, actor="a", action="x", plan="shop")  # changes neither
    journal.plan_state("shop")
    journal.active_run("shop")
    assert len(read) == 2


def test_every_write_that_changes_a_read_is_seen_at_once(journal: Journal,
                                                         tmp_path: Path) -> None:
    assert journal.plan_state("shop") is None
    journal.save_plan_state(state())
    assert journal.plan_state("shop").phase is Phase.HEALTHY  # type: ignore[union-attr]
    journal.save_plan_state(state(Phase.TRIPPED))
    assert journal.plan_state("shop").phase is Phase.TRIPPED  # type: ignore[union-attr]

    assert journal.active_run("shop") is None
    run = journal.start_run(plan="shop", kind="failover", phase=Phase.FAILING_OVER, level=1,
                            reason="r", requested_by="controller", detected_at=1.0,
                            now=time.time(), steps=[{"name": "s", "action": "manual"}],
                            approved=False)
    assert journal.active_run("shop").approved is False  # type: ignore[union-attr]
    journal.update_run(run.id, phase=Phase.FAILING_OVER, approved=True)
    assert journal.active_run("shop").approved is True  # type: ignore[union-attr]
    journal.update_run(run.id, phase=Phase.FAILED_OVER, finished_at=time.time())
    assert journal.active_run("shop") is None

    # another connection on the same file (the CLI): its commit is seen at once
    other = Journal(tmp_path / "journal.db")
    try:
        other.save_plan_state(state(Phase.FAILED_OVER))
        later = other.start_run(plan="shop", kind="failback", phase=Phase.FAILING_BACK,
                                level=None, reason="r", requested_by="alice",
                                detected_at=2.0, now=time.time() + 1,
                                steps=[{"name": "s", "action": "manual"}], approved=True)
    finally:
        other.close()
    assert journal.plan_state("shop").phase is Phase.FAILED_OVER  # type: ignore[union-attr]
    assert journal.active_run("shop").id == later.id  # type: ignore[union-attr]

    journal.retire_plan("shop", as_name="shop@u1")
    assert journal.plan_state("shop") is None and journal.active_run("shop") is None


def test_what_a_caller_does_to_what_it_read_is_not_what_the_next_one_reads(
        journal: Journal) -> None:
    journal.save_plan_state(state())
    first = journal.plan_state("shop")
    assert first is not None
    first.policy["decided"] = "tripped"
    again = journal.plan_state("shop")
    assert again is not None and again.policy == {"decided": "healthy"}


def test_a_transaction_that_failed_leaves_nothing_remembered(journal: Journal) -> None:
    journal.save_plan_state(state())
    try:
        with journal._tx() as db:
            db.execute("UPDATE plan_state SET phase=? WHERE plan=?",
                       (Phase.TRIPPED.value, "shop"))
            assert journal.plan_state("shop").phase is Phase.TRIPPED  # type: ignore[union-attr]
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert journal.plan_state("shop").phase is Phase.HEALTHY  # type: ignore[union-attr]

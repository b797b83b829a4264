"""Four eyes (`approval.distinct`, unset = true in manual mode): the person who requested a
failover cannot also approve it; the refusal names why and whom to ask, and is audited."""

from __future__ import annotations

from typing import Any

import pytest

from controller.journal import Journal
from controller.model import Phase
from tests.unit.test_engine import World, make_plan


def requested(journal: Journal, approval: dict[str, Any], mode: str = "manual") -> World:
    """A plan in `mode` with `approval`, and a failover alice requested (started, waiting
    for approval when the plan needs it)."""
    world = World(make_plan(lambda s: s.update(mode=mode, approval=approval)), journal)
    world.tick(True)
    world.engine.request("failover", actor="alice", reason="dc-a is flooding")
    world.engine.reconcile()
    return world


def test_a_requester_cannot_approve_their_own_manual_failover(journal: Journal) -> None:
    world = requested(journal, {"approvers": ["alice", "bob", "carol"]})
    run = world.run()
    assert run.requested_by == "alice"
    assert world.run().phase is not Phase.FAILED_OVER  # alice's request is no approval

    with pytest.raises(PermissionError) as refused:
        world.engine.approve(run.id, actor="alice")
    assert str(refused.value) == (
        f"alice requested run {run.id} and may not also approve it: plan memory-drill needs "
        "a second person (four eyes, approval.distinct); ask one of bob, carol")
    world.engine.reconcile()
    assert not world.run().approved
    [audit] = [a for a in journal.audit_trail(run_id=run.id)
               if a["action"] == "approval-refused"]
    assert audit["actor"] == "alice" and "four eyes" in audit["detail"]

    world.engine.approve(run.id, actor="bob")
    world.engine.reconcile()
    assert world.run().phase is Phase.FAILED_OVER and world.run().approved


def test_the_requesters_approval_of_a_gated_step_does_not_count(journal: Journal) -> None:
    world = requested(journal, {})
    run = world.run()
    world.engine.approve(run.id, actor="bob")
    journal.approve(run_id=run.id, step="dns-cutover", actor="alice", at=world.clock.now())
    assert world.engine.people.approvals(run.id, "dns-cutover") == []
    assert world.engine.people.approvals(run.id, "") == [("bob", world.clock.now())]


def test_distinct_false_lets_the_requester_approve(journal: Journal) -> None:
    world = requested(journal, {"distinct": False})
    assert world.run().phase is Phase.FAILED_OVER  # the request was its own approval


def test_automatic_mode_lets_the_requester_approve_by_default(journal: Journal) -> None:
    assert requested(journal, {}, mode="automatic").run().phase is Phase.FAILED_OVER


def test_distinct_true_asks_four_eyes_in_automatic_mode_too(journal: Journal) -> None:
    world = requested(journal, {"distinct": True}, mode="automatic")
    assert not world.run().approved
    with pytest.raises(PermissionError, match="four eyes"):
        world.engine.approve(world.run().id, actor="alice")


def test_a_controller_tripped_run_may_be_approved_by_anyone(journal: Journal) -> None:
    world = World(make_plan(lambda s: s.update(mode="manual")), journal)
    world.tick(True)
    world.outage()
    run = world.run()
    assert run.requested_by == "controller" and not run.approved
    world.engine.approve(run.id, actor="alice")
    world.engine.reconcile()
    assert world.run().phase is Phase.FAILED_OVER

"""A run says what started it: a requested failover is no threshold trip. It records who
asked and why, has the level asked for or none, and says so in the cycle's events, the
run record, the start notice and its notify step; a trip says it tripped."""

from __future__ import annotations

from controller import notices, testing
from controller.engine.cycle import Started
from controller.journal import Journal
from controller.model import Origin, Phase, Trigger
from tests.unit.test_engine import World, make_plan

REASON = "dc-a power work"


def _start_notices(journal: Journal, run_id: str) -> list[str]:
    decided = [notices.parse_pending(a["detail"]) for a in journal.audit_trail(run_id=run_id)
               if a["action"] == notices.PENDING]
    return [p[2] for p in decided if p is not None and " started: " in p[2]]


def test_a_requested_failover_says_who_asked_and_why_and_has_no_level(
        journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)
    w.engine.request("failover", actor="oncall", reason=REASON)
    cycle = w.engine.reconcile()
    run = w.run()
    assert cycle.phase is Phase.FAILED_OVER
    assert run.origin == Origin(Trigger.REQUEST, "oncall", REASON)
    assert run.level is None and journal.plan_state(run.plan).level is None  # type: ignore[union-attr]
    assert [e for e in cycle.events if isinstance(e, Started)] == [
        Started(run.id, "failover", run.origin)]
    assert run.to_json()["origin"] == "request"
    assert run.to_json()["cause"] == f"requested by oncall: {REASON}"
    # no level: the start notice goes to the least severe level's rule only (calm), and
    # says it was requested
    started = _start_notices(journal, run.id)
    assert started == [f"failover started: requested by oncall: {REASON}"]
    # the plan's own notify step reaches its backend's least severe rule (im: level 2)
    assert w.steps()[0].evidence["recipients"] == ["department-heads"]
    assert w.steps()[0].evidence["level"] is None


def test_a_requested_failover_keeps_the_level_asked_for(journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)
    w.engine.request("failover", actor="oncall", reason=REASON, level=2)
    w.engine.reconcile()
    run = w.run()
    assert run.level == 2 and run.origin.requested
    assert w.steps()[0].evidence["recipients"] == ["department-heads"]


def test_a_trip_says_it_tripped_and_keeps_the_policys_level(journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)
    cycle = w.outage()
    run = w.run()
    assert run.origin.trigger is Trigger.TRIP and run.origin.by == "controller"
    assert run.level == 1 and run.origin.text().startswith("tripped: ")
    assert run.to_json()["origin"] == "trip"
    assert cycle is not None and Started(run.id, "failover", run.origin) in cycle.events
    assert _start_notices(journal, run.id) == [f"failover started: {run.reason}"]


def test_a_requested_run_without_a_level_takes_the_level_of_a_trip_during_it(
        journal: Journal) -> None:
    w = World(make_plan(lambda s: s["steps"][3].update(approval=True)), journal)
    w.tick(True)
    w.engine.request("failover", actor="oncall", reason=REASON)
    assert w.engine.reconcile().phase is Phase.AWAITING_APPROVAL  # a gated step waits
    assert w.run().level is None
    testing.set_health("dc-a", False)  # the primary fails meanwhile: a trip at level 1
    decided = [w.tick(False).decision for _ in range(12)]
    assert any(d is not None and d.level == 1 for d in decided)
    run = w.run()
    assert run.level == 1 and run.origin.requested  # still the request, now at level 1
    assert any(a["action"] == "escalate" and a["detail"] == "level None -> 1"
               for a in journal.audit_trail(run_id=run.id))

"""What `Engine.tick` and `Engine.reconcile` say a cycle did, as typed events: callers
(`failoverctl run`, the drill, the operator) act and print on these, not on sentences."""

from __future__ import annotations

from controller.engine.cycle import (
    Decided,
    Ended,
    Ran,
    Refused,
    Started,
    StoodBy,
    WaitFor,
    Waiting,
)
from controller.journal import Journal
from controller.model import DecisionState, Phase, StepStatus, Trigger
from tests.unit.test_engine import World, _with_human_steps, make_plan


def test_a_run_waiting_for_approval_says_so_each_cycle_not_still_tripped(
        journal: Journal) -> None:
    w = World(make_plan(lambda s: s.update(mode="manual")), journal)
    cycle = w.outage()
    run = w.run()
    assert [type(e) for e in cycle.events] == [Decided, Started, Waiting]
    assert cycle.decision is not None and cycle.decision.state is DecisionState.TRIPPED
    assert cycle.events[1] == Started(run.id, "failover", run.origin)
    assert run.origin.trigger is Trigger.TRIP and run.origin.by == "controller"
    assert cycle.waiting == Waiting(run.id, WaitFor.APPROVAL)
    again = w.tick(False)
    assert again.decision is not None and again.decision.state is DecisionState.STILL_TRIPPED
    assert again.waiting == Waiting(run.id, WaitFor.APPROVAL)
    assert again.waiting.command("--plan p.yaml") == f"failoverctl approve {run.id} --plan p.yaml"
    w.engine.approve(run.id, actor="oncall")
    done = w.engine.reconcile()
    assert [e for e in done.events if isinstance(e, Ran)] == [
        Ran(run.id, s, StepStatus.SUCCEEDED)
        for s in ("notify-incident", "redirect-traffic", "dns-cutover", "link-test")]
    assert done.events[-1] == Ended(run.id, Phase.FAILED_OVER, "all steps succeeded")
    assert done.decision is None  # reconcile acts on the journal; it does not decide


def test_a_gated_step_waits_for_its_approval(journal: Journal) -> None:
    w = World(make_plan(lambda s: s["steps"][2].update(approval=True)), journal)
    waiting = w.outage().waiting
    run = w.run()
    assert waiting == Waiting(run.id, WaitFor.APPROVAL, "dns-cutover")
    assert waiting.command() == f"failoverctl approve {run.id} --step dns-cutover"


def test_a_run_waiting_for_a_person_says_which_step_and_done_not_approve(
        journal: Journal) -> None:
    w = World(make_plan(_with_human_steps), journal)
    cycle = w.outage()
    run = w.run()
    assert cycle.phase is Phase.AWAITING_APPROVAL  # the phase is shared; the reason is not
    assert cycle.waiting == Waiting(run.id, WaitFor.PERSON, "compensation-plan")
    assert w.tick(False).waiting == cycle.waiting
    assert cycle.waiting.command("--plan p.yaml") == (
        f"failoverctl done {run.id} compensation-plan --plan p.yaml")


def test_a_controller_without_the_lease_stands_by_and_decides_nothing(
        journal: Journal) -> None:
    plan = make_plan()
    a = World(plan, journal, holder="a")
    b = World(plan, Journal(journal.path), holder="b", clock=a.clock)
    a.tick(True)
    decisions = journal.decisions(plan.name)
    cycle = b.tick(False)
    assert cycle.events == (StoodBy("another controller holds plan/memory-drill"),)
    assert journal.decisions(plan.name) == decisions


def test_a_request_that_does_not_fit_is_refused_in_the_cycle(journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)
    w.engine.request("failback", actor="oncall", reason="by mistake")
    assert w.engine.reconcile().events == (
        Refused("failback", "nothing to fail back: plan is Healthy"),)

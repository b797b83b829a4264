"""The promote step with the in-memory database pair: it fences the old primary before it
promotes (by the plan's method, else its STONITH command, else a person's confirmation),
refuses a standby over its RPO budget or not streaming with a named state and changes
nothing then, records what it did (fence, LSNs, data lost, phases), never promotes twice
(a resumed attempt finds the promotion and records it done), and its readiness says
whether the standby could be promoted now."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from controller import fencing
from controller.backends import Backends
from controller.db import Node
from controller.fencing import Fence
from controller.journal import Journal
from controller.model import PermanentError, Phase, StepStatus
from controller.operator_requests import done_problem
from controller.plan import FailoverPlan, PlanError, plan_warnings
from controller.readiness import checks
from controller.steps import StepContext, promote
from controller.testing_db import FakeDatabase
from tests.unit.test_engine import World, make_plan

VALIDATION = [{"name": "orders", "query": "SELECT 1", "expect": "1"}]


def promote_plan(*, fence: dict[str, Any] | None = None, person: bool = False,
                 db: dict[str, Any] | None = None, **params: Any) -> FailoverPlan:
    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"].append({"name": "pg", "role": "database", "kind": "memory",
                                 "options": {"key": "pg", **(db or {})}})
        steps = [{"name": "fence-primary", "action": "manual",
                  "params": {"instructions": "power off dc-a's database host"}}] \
            if person else []
        steps.append({"name": "promote-db", "action": "promote", "backend": "pg",
                      "retries": 0, "params": {
                          "standby": {"host": "dc-b"}, "primary": {"host": "dc-a"},
                          "rpo": "30s", "fence": fence or {"method": "sql",
                                                           "command": ["/bin/true"]},
                          "validation": VALIDATION, **params}})
        spec["steps"] = steps
    return make_plan(mutate)


def context(plan: FailoverPlan) -> StepContext:
    return StepContext(plan=plan, run_id="run-1", level=1, backends=Backends(plan),
                       lookup_evidence=lambda run, step: {})


def fake(ctx: StepContext) -> FakeDatabase:
    db = ctx.backends.database("pg")
    assert isinstance(db, FakeDatabase)
    return db


def perform(plan: FailoverPlan, ctx: StepContext, *, token: int = 10) -> dict[str, Any]:
    step = plan.spec.steps[-1]
    with fencing.scope(Fence(token, "test-1", label="run-1/promote-db")):
        change = promote.KIND.prepare(step, ctx)
        return {**change, **promote.KIND.apply(step, ctx, change)}


def test_fences_the_reachable_primary_then_promotes_and_records_it() -> None:
    plan = promote_plan()
    ctx = context(plan)
    evidence = perform(plan, ctx)
    nodes = fake(ctx).nodes()
    assert nodes["dc-a"]["readOnly"] and nodes["dc-a"]["fenced"] == "sql"
    assert not nodes["dc-b"]["recovery"] and nodes["dc-b"]["timeline"] == 2
    assert evidence["fence"]["how"] == "sql" and evidence["timeline"] == 2
    assert evidence["lsnReached"] == evidence["primaryLastLsn"] == "0/3000000"
    assert evidence["rpoBytes"] == 0 and evidence["standbyBefore"]["timeline"] == 1
    assert set(evidence["phases"]) == set(promote.PHASES)
    assert evidence["validation"] == [{"name": "orders", "value": "1", "passed": True}]
    assert [p["token"] for p in fake(ctx).promotions()] == [10]
    facts = promote.KIND.facts(evidence)
    assert facts[0] == "old primary fenced by sql; promoted to timeline 2 at 0/3000000"


@pytest.mark.parametrize(("db", "params", "state"), [
    ({"lagSeconds": 45}, {}, "lag-over-budget: dc-b:5432 lags 45.0 s behind (budget 30 s, "
                             "params.rpo)"),
    ({"lagBytes": 4096}, {"rpoBytes": 1024}, "lag-over-budget: dc-b:5432 is 4096 bytes "
                                             "behind the primary (budget 1024 bytes"),
    ({"streaming": False}, {}, "standby-not-streaming: dc-b:5432 does not stream from the "
                               "primary dc-a:5432, which answers"),
])
def test_a_standby_that_may_not_be_promoted_is_refused_and_nothing_changes(
        db: dict[str, Any], params: dict[str, Any], state: str) -> None:
    plan = promote_plan(db=db, **params)
    ctx = context(plan)
    with pytest.raises(promote.Refused, match=re.escape(state)):
        perform(plan, ctx)
    nodes = fake(ctx).nodes()
    assert nodes["dc-a"]["fenced"] is None and nodes["dc-b"]["recovery"]
    assert fake(ctx).promotions() == []


def test_an_unreachable_primary_is_fenced_by_the_plans_command(tmp_path: Path) -> None:
    hook = tmp_path / "stonith"
    hook.write_text(f"#!{sys.executable}\nimport pathlib, sys\n"
                    f"pathlib.Path({str(tmp_path / 'called')!r}).write_text(' '.join("
                    "sys.argv[1:]))\n")
    hook.chmod(0o755)
    plan = promote_plan(fence={"method": "ssh-stop", "command": [str(hook), "dc-a"]},
                        db={"runCommands": True})
    ctx = context(plan)
    fake(ctx).set_node("dc-a", reachable=False)
    evidence = perform(plan, ctx)
    assert (tmp_path / "called").read_text() == "dc-a"
    assert evidence["fence"]["how"] == f"command {hook}"
    assert "its host is cut off" in evidence["fence"]["unreachable"]
    assert evidence["primaryLastLsn"] is None and evidence["rpoBytes"] is None
    assert fake(ctx).nodes()["dc-a"]["fenced"] == "command"


def test_a_fence_primary_step_must_be_a_human_step_before_the_promotion() -> None:
    promote_plan(fence={"method": "ssh-stop"})  # no command, no human step: it asks
    with pytest.raises(PlanError, match=re.escape(
            "params.fence.confirmStep: step 'promote-db' confirms the fence only as a "
            "manual step (not parallel) before step 'promote-db'; remove it")):
        promote_plan(fence={"method": "ssh-stop", "confirmStep": "promote-db"})
    with pytest.raises(PlanError, match=re.escape("params.fence.command: method command needs")):
        promote_plan(fence={"method": "command"})


def asking_world(journal: Journal, **fence: Any) -> tuple[World, FakeDatabase]:
    """A failover whose old primary cannot be reached, with no fencing command and no
    human step: the promote step asks for a person."""
    plan = promote_plan(fence={"method": "ssh-stop", **fence})
    world = World(plan, journal)
    db = fake(context(plan))
    db.set_node("dc-a", reachable=False)
    world.outage()
    for _ in range(3):
        world.tick(False)
    return world, db


def test_an_unreachable_primary_makes_the_step_ask_a_person_then_it_promotes(
        journal: Journal) -> None:
    world, db = asking_world(journal)
    run = world.run()
    assert run.phase is Phase.AWAITING_APPROVAL
    (asking,) = world.steps()
    assert asking.status is StepStatus.AWAITING_PERSON and db.promotions() == []
    assert asking.error is not None and asking.error.startswith(
        "the old primary dc-a:5432 cannot be reached (dc-a:5432 does not answer (its host "
        "is cut off)) and the plan names no fencing command (params.fence.command): stop "
        "it by hand so it cannot take writes")
    assert f"failoverctl done {run.id} promote-db" in asking.error
    assert asking.evidence["person"]["until"] == asking.evidence["person"]["askedAt"] + 3600
    for _ in range(3):  # waiting costs nothing and changes nothing
        world.tick(False)
    assert world.steps()[0].status is StepStatus.AWAITING_PERSON and db.promotions() == []
    # in a cluster, `failoverctl done RUN promote-db --plan fop/NAME` annotates the plan:
    # the operator acts on it as on a human step's
    assert done_problem(journal, world.plan.name, f"{run.id}:promote-db") is None
    db.fence_by_person("dc-a")
    world.engine.done(run.id, "promote-db", actor="oncall")
    for _ in range(3):
        world.tick(False)
    promoted = world.steps()[0]
    assert promoted.status is StepStatus.SUCCEEDED, promoted.error
    assert promoted.evidence["fence"]["how"] == "a person (oncall, said done)"
    assert promoted.evidence["person"]["confirmedBy"] == "oncall"
    assert len(db.promotions()) == 1 and world.run().phase is Phase.FAILED_OVER
    assert ("oncall", "done", "step promote-db") in [
        (a["actor"], a["action"], a["detail"]) for a in journal.audit_trail(run_id=run.id)]
    assert promote.KIND.facts(promoted.evidence)[0].startswith(
        "old primary fenced by a person (oncall, said done); promoted to timeline 2")


def test_a_reachable_primary_is_fenced_without_asking_anyone(journal: Journal) -> None:
    plan = promote_plan(fence={"method": "sql"})
    world = World(plan, journal)
    world.outage()
    for _ in range(3):
        world.tick(False)
    (rec,) = world.steps()
    assert rec.status is StepStatus.SUCCEEDED, rec.error
    assert rec.evidence["fence"]["how"] == "sql" and "person" not in rec.evidence


def test_no_confirmation_within_the_wait_fails_the_step_and_never_promotes(
        journal: Journal) -> None:
    world, db = asking_world(journal, confirmTimeout="10m")
    world.tick(False, seconds=601)
    (rec,) = world.steps()
    assert rec.status is StepStatus.FAILED and world.run().phase is Phase.FAILED
    assert rec.error == ("fence-unconfirmed: no one confirmed the fence of dc-a:5432 within "
                         "10m (params.fence.confirmTimeout); not promoted: fence it, then "
                         "fail over again, or name a STONITH hook in params.fence.command")
    assert db.promotions() == [] and db.nodes()["dc-b"]["recovery"]
    assert "unanswered" in [a["action"] for a in journal.audit_trail(run_id=rec.run_id)]
    with pytest.raises(LookupError, match="steps waiting for a person now: none"):
        world.engine.done(rec.run_id, "promote-db", actor="oncall")


def test_validate_warns_of_a_cooldown_shorter_than_a_database_failback() -> None:
    plan = promote_plan(failback={"catchUp": "10m"})
    plan.spec.trigger.cooldown = 60.0
    assert ("steps[0] (promote-db).params.failback.catchUp: a database failback may take "
            "10m, longer than the plan's cooldown (spec.trigger.cooldown 60.00 s): a probe "
            "blip right after a failback trips again before the standby has caught up, and "
            "the new promotion refuses; set the cooldown to at least 10m"
            ) in plan_warnings(plan)
    plan.spec.trigger.cooldown = 600.0
    assert not any("cooldown" in w for w in plan_warnings(plan))


def test_the_older_fence_primary_step_still_confirms_the_fence(journal: Journal) -> None:
    plan = promote_plan(fence={"method": "ssh-stop"}, person=True)
    assert any("params.fence.confirmStep: the human step 'fence-primary' waits for a "
               "person even when the old primary is fenced without one; remove it" in w
               for w in plan_warnings(plan))
    world = World(plan, journal)
    db = fake(context(plan))
    db.set_node("dc-a", reachable=False)
    world.outage()
    for _ in range(3):
        world.tick(False)
    run = world.run()
    assert run.phase is Phase.AWAITING_APPROVAL
    assert [(s.name, s.status) for s in world.steps()] == [
        ("fence-primary", StepStatus.AWAITING_PERSON), ("promote-db", StepStatus.PENDING)]
    assert db.promotions() == []
    world.engine.done(run.id, "fence-primary", actor="oncall")
    for _ in range(3):
        world.tick(False)
    promoted = world.steps()[1]
    assert promoted.status is StepStatus.SUCCEEDED, promoted.error
    assert promoted.evidence["fence"]["how"] == "a person (step fence-primary)"
    assert len(db.promotions()) == 1


def test_a_resumed_attempt_finds_the_promotion_and_does_not_promote_again() -> None:
    plan = promote_plan()
    ctx = context(plan)
    step = plan.spec.steps[-1]
    with fencing.scope(Fence(10, "test-1", label="run-1/promote-db")):
        change = promote.KIND.prepare(step, ctx)  # journaled before the first attempt
        promote.KIND.apply(step, ctx, change)  # landed; its answer was lost
        again = promote.KIND.apply(step, ctx, change)
    assert again["alreadyPromoted"] is True and again["timeline"] == 2
    assert len(fake(ctx).promotions()) == 1
    assert promote.KIND.facts(again)[0].startswith("found promoted already (timeline 2)")


def test_a_primary_never_seen_as_a_standby_is_not_called_promoted() -> None:
    plan = promote_plan()
    ctx = context(plan)
    fake(ctx).set_node("dc-b", recovery=False, timeline=2)
    with pytest.raises(promote.Refused, match="not-a-standby: dc-b:5432 is not in recovery"):
        perform(plan, ctx)


def test_a_standby_a_person_promotes_after_it_was_read_is_not_promoted_again() -> None:
    plan = promote_plan()
    ctx = context(plan)
    step = plan.spec.steps[-1]
    with fencing.scope(Fence(10, "test-1", label="run-1/promote-db")):
        change = promote.KIND.prepare(step, ctx)  # read in recovery, handed to apply
        fake(ctx).set_node("dc-b", recovery=False)  # promoted by hand in between
        with pytest.raises(promote.Refused, match="not-a-standby: dc-b:5432 is not in "
                           "recovery"):
            promote.KIND.apply(step, ctx, change)
    assert fake(ctx).promotions() == []


def test_a_stale_token_cannot_fence_or_promote() -> None:
    plan = promote_plan()
    ctx = context(plan)
    perform(plan, ctx, token=20)
    fake(ctx).set_node("dc-b", recovery=True, streaming=True)  # a standby again
    with pytest.raises(fencing.StaleToken):
        perform(plan, ctx, token=19)
    assert len(fake(ctx).promotions()) == 1


def test_a_validation_query_that_fails_fails_the_attempt_after_the_promotion() -> None:
    plan = promote_plan(validation=[{"name": "orders", "query": "SELECT 1", "expect": "2"}])
    ctx = context(plan)
    with pytest.raises(AssertionError, match="orders returned '1'"):
        perform(plan, ctx)
    assert len(fake(ctx).promotions()) == 1  # a retry finds it promoted and validates again


def test_readiness_checks_the_standby_the_fence_path_and_the_slots() -> None:
    plan = promote_plan(slotLimit=1000)
    found = {c.name: c for c in checks(plan, Backends(plan))}
    assert found["step promote-db: standby streaming within budget"].ok
    assert found["step promote-db: fence path"].ok
    assert found["step promote-db: fence command"].ok
    assert found["step promote-db: replication slots"].ok

    bad = promote_plan(slotLimit=1000, db={"key": "pg2", "slotBytes": 5000, "lagSeconds": 40})
    backends = Backends(bad)
    db = backends.database("pg")
    assert isinstance(db, FakeDatabase)
    db.set_node("dc-b", timeline=1)
    found = {c.name: c for c in checks(bad, backends)}
    assert "lags 40.0 s behind (budget 30 s" in \
        found["step promote-db: standby streaming within budget"].detail
    assert "replication slots keep too much WAL: dc-b 5000 bytes (limit 1000" in \
        found["step promote-db: replication slots"].detail
    db.set_node("dc-b", timeline=3)
    found = {c.name: c for c in checks(bad, backends)}
    assert "is on timeline 3, the primary on 1: rebuild the standby" in \
        found["step promote-db: standby streaming within budget"].detail


def test_readiness_reports_the_wal_the_failback_slot_keeps_without_failing() -> None:
    plan = promote_plan(slotLimit=1000)
    ctx = context(plan)
    evidence = perform(plan, ctx)
    assert evidence["slot"] == {"slot": "failover_failback", "already": False,
                                "node": "dc-b:5432"}
    db = fake(ctx)
    for _ in range(30):  # the incident writes past the limit; dc-a is down
        db.commit("dc-b")
    found = {c.name: c for c in checks(plan, ctx.backends)}
    slots = found["step promote-db: replication slots"]
    assert slots.ok, slots.detail
    assert re.search(r"slot failover_failback on dc-b:5432 keeps \d{4} bytes of WAL for the "
                     r"rebuild of dc-a:5432 \(expected until the failback\)", slots.detail)


def test_the_fake_refuses_promoting_a_primary() -> None:
    ctx = context(promote_plan())
    with pytest.raises(PermanentError, match="dc-a:5432 is not in recovery"):
        fake(ctx).promote(Node(host="dc-a"), timeout=5)


@pytest.mark.parametrize(("probe", "state"), [
    ({"value": 45.0}, "lag-over-budget: dc-b:5432 lags 45.0 s behind (budget 30 s"),
    ({"up": False}, "standby-not-streaming: dc-b:5432 does not stream from the primary "
                    "dc-a:5432, which answers (lag probe: "),
])
def test_the_primarys_lag_probe_joins_the_decision(probe: dict[str, Any], state: str
                                                   ) -> None:
    plan = promote_plan(lagProbe={"kind": "memory", "options": {"key": "lag", **probe}})
    ctx = context(plan)
    with pytest.raises(promote.Refused, match=re.escape(state)):
        perform(plan, ctx)
    assert fake(ctx).promotions() == [] and fake(ctx).nodes()["dc-a"]["fenced"] is None
    found = {c.name: c for c in checks(plan, Backends(plan))}
    assert state in found["step promote-db: standby streaming within budget"].detail

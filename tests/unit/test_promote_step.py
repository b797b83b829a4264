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
from controller.plan import FailoverPlan, PlanError
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


def test_without_a_command_the_plan_must_let_a_person_confirm_the_fence() -> None:
    with pytest.raises(PlanError, match=re.escape(
            "without a fencing command, a primary that cannot be reached is fenced by a "
            "person: add a manual step 'fence-primary'")):
        promote_plan(fence={"method": "ssh-stop"})
    with pytest.raises(PlanError, match=re.escape("params.fence.command: method command needs")):
        promote_plan(fence={"method": "command"})


def test_an_unreachable_primary_waits_for_a_person_then_promotes(journal: Journal) -> None:
    plan = promote_plan(fence={"method": "ssh-stop"}, person=True)
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

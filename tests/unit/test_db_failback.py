"""The database failback with the in-memory pair: a failback run starts with one
`db-failback` step when the incident promoted a standby, before every traffic and DNS
revert whatever order the failover ran in; it brings every row committed at dc-b during
the incident to dc-a, switches over with dc-b fenced first, leaves dc-b streaming from
dc-a; a dc-a that cannot catch up is refused with nothing switched; a rewind that fails
falls back to a base backup; and an attempt resumed after a crash at any phase finishes
the job from what it reads on the nodes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller import fencing, testing
from controller.db import FenceMethod, Node
from controller.failback import revert_steps
from controller.fencing import Fence
from controller.journal import Journal
from controller.model import Phase, StepStatus
from controller.plan import FailoverPlan, PlanError, Step
from controller.steps import db_failback, promote
from controller.testing_db import FakeDatabase
from tests.unit.test_engine import World, make_plan
from tests.unit.test_promote_step import context, fake

HOME, AWAY = Node(host="dc-a"), Node(host="dc-b")
PROMOTE = {"name": "promote-db", "action": "promote", "backend": "pg", "retries": 0,
           "params": {"standby": {"host": "dc-b"}, "primary": {"host": "dc-a"},
                      "fence": {"method": "sql"}, "failback": {"catchUp": "1s"}}}


def plan_with(position: int, **failback: Any) -> FailoverPlan:
    """The memory drill with a promote step at `position` among its steps."""
    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"].append({"name": "pg", "role": "database", "kind": "memory",
                                 "options": {"key": "pg"}})
        step = {**PROMOTE, "params": {**PROMOTE["params"], "fence": {
            "method": "sql", "command": ["/bin/true"]},
            "failback": {"catchUp": "1s", **failback}}}
        spec["steps"].insert(position, step)
    return make_plan(mutate)


def failed_over(plan: FailoverPlan, journal: Journal) -> tuple[World, FakeDatabase]:
    world = World(plan, journal)
    db = world.backends.database("pg")
    assert isinstance(db, FakeDatabase)
    db.commit("dc-a")
    assert world.outage().phase is Phase.FAILED_OVER
    assert [c["node"] for c in db.commits()] == ["dc-a"]
    for _ in range(3):  # clients write at dc-b during the incident
        assert db.commit("dc-b") is not None
    return world, db


@pytest.mark.parametrize("position", [0, 2, 4])
def test_the_failback_puts_the_database_first_whatever_the_failover_order(
        position: int, journal: Journal) -> None:
    plan = plan_with(position)
    world, db = failed_over(plan, journal)
    planned = revert_steps(journal, plan.name)
    assert [s["action"] for s in planned] == ["db-failback", "revert", "revert"]
    assert planned[0]["name"] == "failback-promote-db" and planned[0]["onFailure"] == "abort"
    assert planned[0]["params"]["definition"]["name"] == "promote-db"
    testing.set_health("dc-a", True)
    world.engine.request("failback", actor="oncall", reason="dc-a repaired")
    world.engine.reconcile()
    steps = world.steps()
    assert [s.status for s in steps] == [StepStatus.SUCCEEDED] * 3, [s.error for s in steps]
    nodes = db.nodes()
    assert nodes["dc-a"]["rows"] == [1, 2, 3, 4] and not nodes["dc-a"]["recovery"]
    assert nodes["dc-b"]["recovery"] and nodes["dc-b"]["upstream"] == "dc-a"
    assert nodes["dc-b"]["rows"] == [1, 2, 3, 4] and nodes["dc-a"]["timeline"] == 3


def test_no_promotion_no_database_step(journal: Journal) -> None:
    world = World(make_plan(), journal)
    world.outage()
    assert [s["action"] for s in revert_steps(journal, world.plan.name)] == ["revert",
                                                                           "revert"]


def test_a_database_step_that_fails_keeps_the_traffic_where_the_database_is(
        journal: Journal) -> None:
    plan = plan_with(4)
    world, db = failed_over(plan, journal)
    db.set_node("dc-a", lagBytes=4096)  # dc-a will never catch up
    testing.set_health("dc-a", True)
    world.engine.request("failback", actor="oncall", reason="dc-a repaired")
    world.engine.reconcile()
    steps = world.steps()
    assert [s.status for s in steps] == [StepStatus.FAILED, StepStatus.PENDING,
                                         StepStatus.PENDING]
    assert "home-not-caught-up: dc-a:5432 did not stream up to dc-b:5432 within 1 s " \
        "(params.failback.catchUp of the promote step): nothing was switched" \
        in (steps[0].error or "")
    assert world.run().phase is Phase.FAILED
    assert world.backends.get("edge").current()["dc-b"] == 100  # the traffic stayed
    nodes = db.nodes()
    assert not nodes["dc-b"]["recovery"] and not nodes["dc-b"]["readOnly"]
    assert nodes["dc-b"]["running"] and nodes["dc-b"]["fenced"] is None


# --- one step, resumed ------------------------------------------------------------------


def promoted(**failback: Any) -> tuple[FailoverPlan, Step, FakeDatabase]:
    plan = plan_with(0, **failback)
    ctx = context(plan)
    db = fake(ctx)
    db.commit("dc-a")
    step = plan.spec.steps[0]
    with fencing.scope(Fence(5, "test-1", label="run-1/promote-db")):
        promote.KIND.apply(step, ctx, promote.KIND.prepare(step, ctx))
    for _ in range(2):
        db.commit("dc-b")
    return plan, Step.model_validate({
        "name": "failback-promote-db", "action": "db-failback",
        "params": {"of": {"run": "run-1", "step": "promote-db"},
                   "definition": step.model_dump(mode="json", by_alias=True)}}), db


def fail_back(plan: FailoverPlan, step: Step, change: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    ctx = context(plan)
    with fencing.scope(Fence(6, "test-1", label="run-2/failback-promote-db")):
        change = db_failback.KIND.prepare(step, ctx) if change is None else change
        return change, db_failback.KIND.apply(step, ctx, change)


def home(db: FakeDatabase) -> None:
    nodes = db.nodes()
    assert nodes["dc-a"]["rows"] == [1, 2, 3] and not nodes["dc-a"]["recovery"]
    assert nodes["dc-a"]["running"] and not nodes["dc-a"]["readOnly"]
    assert nodes["dc-b"]["recovery"] and nodes["dc-b"]["upstream"] == "dc-a"
    assert db.commit("dc-a") == 4 and db.nodes()["dc-b"]["rows"] == [1, 2, 3, 4]
    assert len(db.promotions()) == 2


CRASHED_AFTER: list[tuple[str, list[Callable[[FakeDatabase], Any]], set[str]]] = [
    ("nothing", [], {"rebuild", "catchUp", "fence", "replay", "promote", "demote"}),
    ("the stop", [lambda db: db.stop(HOME)],
     {"rebuild", "catchUp", "fence", "replay", "promote", "demote"}),
    ("the rewind", [lambda db: db.stop(HOME), lambda db: db.rewind(HOME, source=AWAY)],
     {"rebuild", "catchUp", "fence", "replay", "promote", "demote"}),
    ("the rebuild", [lambda db: db.stop(HOME), lambda db: db.rewind(HOME, source=AWAY),
                     lambda db: db.follow(HOME, source=AWAY)],
     {"rebuild", "catchUp", "fence", "replay", "promote", "demote"}),
    ("the fence", [lambda db: db.stop(HOME), lambda db: db.rewind(HOME, source=AWAY),
                   lambda db: db.follow(HOME, source=AWAY),
                   lambda db: db.fence(AWAY, method=FenceMethod.SSH_STOP)],
     {"fence", "replay", "promote", "demote"}),
    ("the promotion", [lambda db: db.stop(HOME), lambda db: db.rewind(HOME, source=AWAY),
                       lambda db: db.follow(HOME, source=AWAY),
                       lambda db: db.fence(AWAY, method=FenceMethod.SSH_STOP),
                       lambda db: db.promote(HOME, timeout=5)], {"demote"}),
    ("dc-b's rewind", [lambda db: db.stop(HOME), lambda db: db.rewind(HOME, source=AWAY),
                       lambda db: db.follow(HOME, source=AWAY),
                       lambda db: db.fence(AWAY, method=FenceMethod.SSH_STOP),
                       lambda db: db.promote(HOME, timeout=5),
                       lambda db: db.rewind(AWAY, source=HOME)], {"demote"}),
]


@pytest.mark.parametrize(("crashed", "did", "phases"), CRASHED_AFTER,
                         ids=[c[0] for c in CRASHED_AFTER])
def test_an_attempt_resumed_after_a_crash_finishes_from_what_the_nodes_say(
        crashed: str, did: list[Callable[[FakeDatabase], Any]], phases: set[str]) -> None:
    plan, step, db = promoted()
    change = db_failback.KIND.prepare(step, context(plan))  # journaled before attempt 1
    with fencing.scope(Fence(6, "test-1", label="run-2/failback-promote-db")):
        for call in did:  # what the first attempt did before it died
            call(db)
    _, evidence = fail_back(plan, step, change)
    assert set(evidence["phases"]) == phases
    home(db)


def test_a_rewind_that_fails_falls_back_to_a_base_backup() -> None:
    plan, step, db = promoted()
    db.set_node("dc-a", rewindable=False)
    _, evidence = fail_back(plan, step)
    assert evidence["rebuild"]["method"] == "pg_basebackup"
    assert "could not find previous WAL record" in evidence["rebuild"]["rewindError"]
    assert evidence["rebuild"]["aside"] == "dc-a.before-failback-run-1"
    assert evidence["demoted"]["method"] == "pg_rewind"
    home(db)
    facts = db_failback.KIND.facts(evidence)
    assert facts[0] == "database home on dc-a:5432 (timeline 3); dc-b:5432 streams from it"
    assert ("rebuild: pg_basebackup (rewind-failed; the WAL since the fork is 0.0 MB, of "
            "64.0 MB of databases); pg_rewind failed: ") in facts[1]


def test_a_rewind_that_would_copy_half_the_cluster_is_a_base_backup_up_front() -> None:
    plan, step, db = promoted()
    db.set_node("dc-a", rewindMb=40, sizeMb=64)
    _, evidence = fail_back(plan, step)
    rebuild = evidence["rebuild"]
    assert rebuild["method"] == "pg_basebackup" and rebuild["why"] == "rewind-copies-half"
    assert (rebuild["rewindMb"], rebuild["sourceMb"]) == (40, 64)
    assert "rewound" not in rebuild  # no rewind was tried
    assert evidence["demoted"]["method"] == "pg_rewind"  # 16 of 64 MB: less than half
    assert evidence["demoted"]["why"] == "rewind-copies-less"
    home(db)
    assert ("rebuild: pg_basebackup (rewind-copies-half; the WAL since the fork is 0.0 MB, "
            "of 64.0 MB of databases; a rewind would copy 40 of 64 MB)"
            ) in db_failback.KIND.facts(evidence)[1]


@pytest.mark.parametrize(("written", "why", "dry_runs"), [
    (40 << 20, "wal-since-fork-half", ["dc-b"]),  # 40 of 64 MB: no dry run for dc-a
    (1 << 20, "rewind-copies-less", ["dc-a", "dc-b"])])  # the LSN moved by WAL switches
def test_the_wal_dc_b_wrote_since_the_fork_sizes_the_rebuild_before_any_dry_run(
        written: int, why: str, dry_runs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    plan, step, db = promoted()
    away = db.nodes()["dc-b"]
    db.set_node("dc-b", lsn=away["lsn"] + (40 << 20), walBytes=away["walBytes"] + written)
    ran: list[str] = []
    dry_run = FakeDatabase.rewind_size

    def spy(self: FakeDatabase, node: Node, *, source: Node) -> Any:
        ran.append(node.host)
        return dry_run(self, node, source=source)

    monkeypatch.setattr(FakeDatabase, "rewind_size", spy)
    _, evidence = fail_back(plan, step)
    rebuild = evidence["rebuild"]
    assert rebuild["why"] == why and ran == dry_runs
    assert rebuild["method"] == ("pg_basebackup" if why == "wal-since-fork-half"
                                 else "pg_rewind")
    assert rebuild["estimate"] == {"walMb": round(written / (1 << 20), 1),
                                   "databasesMb": 64.0, "from": "0/3000100",
                                   "to": "0/5800300"}  # dc-a's WAL end, dc-b's LSN
    assert evidence["demoted"]["why"] == "rewind-copies-less"  # dc-a wrote nothing since
    home(db)
    if why == "wal-since-fork-half":
        assert db_failback.KIND.facts(evidence)[1] == (
            "rebuild: pg_basebackup (wal-since-fork-half; the WAL since the fork is 40.0 MB, "
            "of 64.0 MB of databases)")


@pytest.mark.parametrize(("fault", "why", "said"), [
    ("startsRewound", "rewound-cannot-start", "did not start within 60 s"),
    ("streamsRewound", "rewound-cannot-stream", "replayed nothing past 0/3000300 for 0.2 s "
     "(params.failback.stall) before reaching 0/3000300 (not streaming)")])
def test_a_rewound_node_that_cannot_start_or_stream_is_rebuilt_from_a_base_backup(
        fault: str, why: str, said: str) -> None:
    plan, step, db = promoted(stall="0.2s")
    db.set_node("dc-a", **{fault: False})  # the WAL since the fork is gone at dc-b
    _, evidence = fail_back(plan, step)
    rebuild = evidence["rebuild"]
    assert rebuild["method"] == "pg_basebackup" and rebuild["why"] == why
    assert rebuild["rewound"] is True and said in rebuild["startError"]
    assert set(rebuild["seconds"]) == {"stop", "choose", "copy", "start"}
    home(db)


def test_the_promotion_keeps_wal_for_the_old_primary_in_a_slot_the_failback_uses() -> None:
    plan, step, db = promoted()
    slots = {s.name: s for s in db.slots(AWAY)}
    assert not slots["failover_failback"].active  # dc-a is down: kept for its rebuild
    _, evidence = fail_back(plan, step)
    assert evidence["slots"]["away"]["already"] is True  # made by the promotion
    assert evidence["slots"]["home"]["already"] is False
    nodes = db.nodes()
    assert nodes["dc-b"]["slot"] == "failover_failback"  # dc-b streams through dc-a's slot
    assert {s.name: s.active for s in db.slots(HOME)}["failover_failback"]
    assert "failover_failback" not in nodes["dc-b"]["slots"]  # the stale one dropped
    assert evidence["demoted"]["staleSlotDropped"] is True


def test_a_stale_token_cannot_rebuild() -> None:
    plan, step, db = promoted()
    with fencing.scope(Fence(9, "test-2", label="run-3/x")):
        db.stop(HOME)
    with pytest.raises(fencing.StaleToken):
        fail_back(plan, step)
    assert db.nodes()["dc-a"]["recovery"] is False  # nothing rebuilt


def test_a_failback_fence_by_command_is_refused_at_validation() -> None:
    with pytest.raises(PlanError, match=r"params\.failback\.fence: the promoted node is "
                       "fenced by ssh-stop or sql before the failback promotes"):
        plan_with(0, fence="command")


def test_a_promote_step_that_failed_before_promoting_leaves_a_step_that_changes_nothing(
        journal: Journal) -> None:
    plan = plan_with(4)
    world = World(plan, journal)
    db = world.backends.database("pg")
    assert isinstance(db, FakeDatabase)
    db.set_node("dc-b", streaming=False)  # refused: standby-not-streaming
    world.outage()
    assert world.steps()[-1].status is StepStatus.FAILED
    planned = revert_steps(journal, plan.name)
    assert planned[0]["action"] == "db-failback"  # it may have promoted: the step reads
    before = db.nodes()
    testing.set_health("dc-a", True)
    world.engine.request("failback", actor="oncall", reason="dc-a repaired")
    world.engine.reconcile()
    database = world.steps()[0]
    assert database.status is StepStatus.SUCCEEDED, database.error
    assert database.evidence["skipped"] == ("dc-b:5432 was never promoted (in recovery on "
                                            "its timeline): there is nothing to bring home")
    assert db.nodes() == before


def test_a_dc_a_that_falls_behind_once_dc_b_is_fenced_is_refused_and_dc_b_unfenced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan, step, db = promoted()
    fence = FakeDatabase.fence

    def falls_behind(self: FakeDatabase, node: Node, **kwargs: Any) -> dict[str, Any]:
        db.set_node("dc-a", lagBytes=256)  # dc-a stops replaying
        db.commit("dc-b")  # the last write before the fence
        return fence(self, node, **kwargs)

    monkeypatch.setattr(FakeDatabase, "fence", falls_behind)
    with pytest.raises(promote.Refused, match=r"replay-timeout: dc-a:5432 did not replay "
                       r"dc-b:5432's last LSN 0/3000400 within 1 s: nothing was switched, "
                       r"dc-b:5432 was unfenced and takes the writes again"):
        fail_back(plan, step)
    nodes = db.nodes()
    assert nodes["dc-b"]["running"] and not nodes["dc-b"]["recovery"]
    assert nodes["dc-b"]["fenced"] is None and nodes["dc-a"]["recovery"]
    assert len(db.promotions()) == 1 and db.commit("dc-b") is not None


def test_a_dry_run_shows_both_nodes_and_changes_nothing() -> None:
    plan, step, db = promoted()
    before = db.nodes()
    summary = db_failback.KIND.plan(step, context(plan)).summary
    assert summary == ("dc-b:5432 primary on timeline 2 at 0/3000300 -> dc-a:5432 primary "
                       "on timeline 1 at 0/3000100, read-only: dc-a:5432 back as the "
                       "primary, dc-b:5432 its standby")
    assert db.nodes() == before


def test_a_dc_a_taking_writes_again_is_refused_not_rewound() -> None:
    plan, step, db = promoted()
    db.set_node("dc-a", readOnly=False, fenced=None)  # someone lifted the fence by hand
    db.commit("dc-a")
    before = db.nodes()
    with pytest.raises(promote.Refused, match=r"two-primaries: dc-a:5432 takes writes while "
                       r"dc-b:5432 is the primary: rebuilding it would discard"):
        fail_back(plan, step)
    assert db.nodes() == before

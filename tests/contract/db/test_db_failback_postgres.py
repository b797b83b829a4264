"""The database failback on a real PostgreSQL primary and streaming standby: after an
incident that promoted dc-b's standby and wrote rows there, the failback's first step
rebuilds dc-a as dc-b's standby (pg_rewind, or a base backup when the rewind fails),
switches over with dc-b fenced first, and turns dc-b into dc-a's standby: every row
written at dc-b is at dc-a, dc-b streams from dc-a, and only then do the traffic and DNS
reverts run. An incident that wrote more WAL than dc-b's `wal_keep_size` still comes
home: the promotion's slot kept that WAL, and without the slot the rewound dc-a, unable
to start, is rebuilt from a base backup; one whose WAL since the fork is half dc-b's
databases or more is a base backup straight away, with no dry run. A dc-a that cannot
catch up is refused with nothing switched; an attempt resumed after dc-b was fenced
finishes the switchover."""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import pytest

from controller import fencing, testing
from controller.backends import Backends
from controller.db import Node, RewindSize
from controller.db.postgres import PostgresDatabase
from controller.drill.processes import stop_pid
from controller.drill.servers.postgres import PostgresServer
from controller.fencing import Fence
from controller.journal import Journal
from controller.model import Phase, StepStatus
from controller.plan import FailoverPlan, Step
from controller.steps import StepContext, db_failback, promote
from tests.contract.db.conftest import adopt, node
from tests.unit.test_engine import World, make_plan

Pair = tuple[PostgresServer, PostgresServer]
INCIDENT_ROWS = "INSERT INTO orders SELECT g, 'incident ' || g FROM generate_series(101, 103) g"


def plan_for(pair: Pair, options: dict[str, Any] | None = None, **failback: Any
             ) -> FailoverPlan:
    old, standby = pair

    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"].append({"name": "pg", "role": "database", "kind": "postgres",
                                 "options": options or {}})
        spec["steps"].append({"name": "promote-db", "action": "promote", "backend": "pg",
                              "retries": 0, "timeout": "2m", "params": {
                                  "standby": node(standby).model_dump(by_alias=True),
                                  "primary": node(old).model_dump(by_alias=True),
                                  "fence": {"method": "ssh-stop", "command": ["/bin/false"]},
                                  "failback": {"catchUp": "60s", **failback}}})
    return make_plan(mutate)


def incident(pair: Pair, plan: FailoverPlan, *, crash: bool = False) -> Step:
    """Promote dc-b (its old primary stopped first, or crashed once dc-b has its rows),
    write rows 101-103 there; the failback's database step."""
    old, standby = pair
    old.psql("INSERT INTO orders SELECT g, 'before ' || g FROM generate_series(1, 3) g")
    if crash:
        rows(standby, 3)
        assert old.pid is not None
        stop_pid(old.pid, signal.SIGQUIT)  # an immediate shutdown: no shutdown checkpoint
    step = plan.spec.steps[-1]
    with fencing.scope(Fence(5, "test-1", label="run-1/promote-db")):
        ctx = context(plan)
        promote.KIND.apply(step, ctx, promote.KIND.prepare(step, ctx))
    old.pid = None  # stopped by the fence
    standby.psql(INCIDENT_ROWS)
    return Step.model_validate({
        "name": "failback-promote-db", "action": "db-failback", "params": {
            "of": {"run": "run-1", "step": "promote-db"},
            "definition": step.model_dump(mode="json", by_alias=True)}})


def context(plan: FailoverPlan) -> StepContext:
    return StepContext(plan=plan, run_id="run-2", level=None, backends=Backends(plan),
                       lookup_evidence=lambda run, name: {})


def fail_back(plan: FailoverPlan, step: Step, change: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    with fencing.scope(Fence(6, "test-1", label="run-2/failback-promote-db")):
        ctx = context(plan)
        change = db_failback.KIND.prepare(step, ctx) if change is None else change
        return db_failback.KIND.apply(step, ctx, change)


def home_with_every_row(pair: Pair) -> None:
    old, standby = pair
    assert old.psql("SELECT pg_is_in_recovery()") == "f"
    assert old.psql("SELECT count(*) FROM orders WHERE id > 100") == "3"
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"
    old.psql("INSERT INTO orders VALUES (201, 'home again')")  # dc-a takes writes
    old.wait_streaming()  # dc-b streams from dc-a
    rows(standby, 7)  # and receives what dc-a writes


def rows(server: PostgresServer, count: int) -> None:
    """Wait until `server` has `count` rows (asynchronous commit and replication)."""
    for _ in range(200):
        if server.psql("SELECT count(*) FROM orders") == str(count):
            return
        time.sleep(0.05)
    assert server.psql("SELECT count(*) FROM orders") == str(count)


def test_a_failback_brings_every_incident_row_home_before_the_traffic(
        pg_pair: Pair, journal: Journal) -> None:
    old, standby = pg_pair
    old.psql("INSERT INTO orders SELECT g, 'before ' || g FROM generate_series(1, 3) g")
    world = World(plan_for(pg_pair), journal)
    assert world.outage().phase is Phase.FAILED_OVER
    old.pid = None  # stopped by the promote step's fence
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    standby.psql(INCIDENT_ROWS)
    testing.set_health("dc-a", True)
    world.engine.request("failback", actor="oncall", reason="dc-a repaired")
    world.engine.reconcile()
    adopt(old, standby)
    steps = world.steps()
    assert world.run().kind == "failback"
    assert [s.name for s in steps] == ["failback-promote-db", "revert-dns-cutover",
                                       "revert-redirect-traffic"]
    database = steps[0]
    assert database.status is StepStatus.SUCCEEDED, database.error
    assert database.finished_at is not None and steps[1].started_at is not None
    assert database.finished_at <= steps[1].started_at
    evidence = database.evidence
    assert evidence["rebuild"]["method"] == "pg_rewind" and evidence["timeline"] == 3
    assert set(evidence["phases"]) == {"rebuild", "catchUp", "fence", "replay", "promote",
                                       "demote"}
    lsns = evidence["lsns"]
    assert lsns["replay"]["home"] >= lsns["fence"]["away"]
    assert evidence["fence"]["method"] == "ssh-stop"
    home_with_every_row(pg_pair)


def test_a_sql_fence_of_dc_b_and_a_failed_rewind_still_bring_every_row_home(
        pg_pair: Pair) -> None:
    old, _ = pg_pair
    old.psql("ALTER SYSTEM SET wal_log_hints = off")  # dc-a cannot be rewound
    old.stop()
    old.start()
    old.wait_streaming()
    plan = plan_for(pg_pair, fence="sql")
    step = incident(pg_pair, plan)
    try:
        evidence = fail_back(plan, step)
    finally:
        adopt(*pg_pair)
    assert evidence["rebuild"]["method"] == "pg_basebackup"
    assert "wal_log_hints" in evidence["rebuild"]["rewindError"]
    assert evidence["fence"]["method"] == "sql"
    demoted = evidence["demoted"]  # dc-b wrote past the fork: the copy is chosen by size
    assert (demoted["method"] == "pg_basebackup") == (
        2 * demoted["rewindMb"] >= demoted["sourceMb"] > 0), demoted
    home_with_every_row(pg_pair)


SEGMENTS = 4  # WAL segments the large incident writes past dc-b's wal_keep_size (0)


def large_incident(standby: PostgresServer) -> None:
    """dc-b, promoted, keeps no WAL for its own sake (`wal_keep_size` 0) and writes
    SEGMENTS segments of rows 111-114, each ended by a WAL switch; its checkpoints then
    remove every segment nothing else keeps."""
    standby.psql("ALTER SYSTEM SET wal_keep_size = 0")
    standby.psql("SELECT pg_reload_conf()")
    for row in range(111, 111 + SEGMENTS):
        standby.psql(f"INSERT INTO orders VALUES ({row}, 'large incident')")
        standby.psql("SELECT pg_switch_wal()")
    standby.psql("CHECKPOINT")
    standby.psql("CHECKPOINT")


def every_incident_row_home(pair: Pair) -> None:
    old, standby = pair
    assert old.psql("SELECT pg_is_in_recovery()") == "f"
    assert old.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM orders WHERE "
                    "id > 100") == "101,102,103,111,112,113,114"
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"
    old.wait_streaming()


def test_an_incident_past_wal_keep_size_comes_home_through_the_promotions_slot(
        pg_pair: Pair) -> None:
    old, standby = pg_pair
    plan = plan_for(pg_pair)
    step = incident(pg_pair, plan)
    large_incident(standby)
    kept = standby.psql("SELECT pg_current_wal_lsn() - restart_lsn FROM "
                        "pg_replication_slots WHERE slot_name = 'failover_failback'")
    assert int(kept) > (SEGMENTS - 1) * 16 * 1024 * 1024  # the incident's WAL, kept
    try:
        evidence = fail_back(plan, step)
    finally:
        adopt(*pg_pair)
    rebuild = evidence["rebuild"]
    assert rebuild["method"] == "pg_rewind" and "startError" not in rebuild, rebuild
    assert evidence["slots"]["away"]["already"] is True  # made by the promotion
    every_incident_row_home(pg_pair)
    # dc-b streams from dc-a through dc-a's slot; dc-b's own (from the incident) is gone
    assert old.psql("SELECT active FROM pg_replication_slots WHERE slot_name = "
                    "'failover_failback'") == "t"
    assert standby.psql("SELECT count(*) FROM pg_replication_slots") == "0"


def test_a_rewound_dc_a_that_cannot_stream_is_rebuilt_from_a_base_backup(
        pg_pair: Pair) -> None:
    _, standby = pg_pair
    plan = plan_for(pg_pair, stall="3s")
    step = incident(pg_pair, plan)
    # a promotion made before promotions kept a slot: the incident's WAL is gone
    standby.psql("SELECT pg_drop_replication_slot('failover_failback')")
    large_incident(standby)
    try:
        evidence = fail_back(plan, step)
    finally:
        adopt(*pg_pair)
    rebuild = evidence["rebuild"]
    assert rebuild["method"] == "pg_basebackup", rebuild
    # dc-a stopped cleanly at the fork: it starts, then cannot get the WAL since
    assert rebuild["why"] == "rewound-cannot-stream"
    assert re.search(r"replayed nothing past \S+ for 3 s \(params.failback.stall\) before "
                     r"reaching \S+ \(not streaming\): .* no longer has the WAL it needs",
                     rebuild["startError"]), rebuild["startError"]
    every_incident_row_home(pg_pair)


def test_an_incident_whose_wal_is_half_the_databases_is_a_base_backup_without_a_dry_run(
        pg_pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    old, standby = pg_pair
    plan = plan_for(pg_pair)
    step = incident(pg_pair, plan, crash=True)  # a dry run would recover dc-a first
    standby.psql("INSERT INTO orders SELECT g, 'incident ' || g FROM "
                 "generate_series(1001, 301000) g")  # ~40 MB of WAL, of ~45 MB of databases
    dry_runs: list[Node] = []
    dry_run = PostgresDatabase.rewind_size

    def spy(self: PostgresDatabase, node: Node, *, source: Node) -> RewindSize:
        dry_runs.append(node)
        return dry_run(self, node, source=source)

    monkeypatch.setattr(PostgresDatabase, "rewind_size", spy)
    try:
        evidence = fail_back(plan, step)
    finally:
        adopt(*pg_pair)
    rebuild, estimate = evidence["rebuild"], evidence["rebuild"]["estimate"]
    assert rebuild["method"] == "pg_basebackup", rebuild
    assert rebuild["why"] == "wal-since-fork-half" and "rewindMb" not in rebuild
    assert 2 * estimate["walMb"] >= estimate["databasesMb"] > 0, estimate
    assert dry_runs == [node(standby)]  # dc-b's, when it is demoted: it wrote nothing since
    assert "the WAL since the fork is" in db_failback.KIND.facts(evidence)[1]
    assert old.psql("SELECT pg_is_in_recovery()") == "f"  # home, with every row
    assert old.psql("SELECT count(*) FROM orders WHERE id > 100") == "300003"
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"
    old.wait_streaming()


def test_a_dc_a_that_cannot_catch_up_is_refused_with_nothing_switched(
        pg_pair: Pair) -> None:
    old, standby = pg_pair
    plan = plan_for(pg_pair, catchUp="1s")
    step = incident(pg_pair, plan)
    with fencing.scope(Fence(6, "test-1", label="run-2/failback-promote-db")):
        db = context(plan).backends.database("pg")
        db.rewind(node(old), source=node(standby))
        db.follow(node(old), source=node(standby))
    adopt(old, standby)
    old.psql("SELECT pg_wal_replay_pause()")
    standby.psql("SET synchronous_commit = on; INSERT INTO orders VALUES (104, 'late')")
    with pytest.raises(promote.Refused, match=r"home-not-caught-up: .* did not stream up "
                       r"to .* within 1 s \(params.failback.catchUp of the promote step\): "
                       r"nothing was switched"):
        fail_back(plan, step)
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    assert standby.psql("SHOW default_transaction_read_only") == "off"
    standby.psql("INSERT INTO orders VALUES (105, 'still takes writes')")
    assert old.psql("SELECT pg_is_in_recovery()") == "t"


def test_an_attempt_resumed_after_dc_b_was_fenced_finishes_the_switchover(
        pg_pair: Pair) -> None:
    old, standby = pg_pair
    plan = plan_for(pg_pair)
    step = incident(pg_pair, plan)
    ctx = context(plan)
    change = db_failback.KIND.prepare(step, ctx)
    with fencing.scope(Fence(6, "test-1", label="run-2/failback-promote-db")):
        db = ctx.backends.database("pg")  # what the first attempt did before it died
        db.stop(node(old))
        db.rewind(node(old), source=node(standby))
        db.follow(node(old), source=node(standby))
        adopt(old, standby)
        rows(old, 6)  # dc-a streamed all dc-b had
        db.stop(node(standby))
    try:
        evidence = fail_back(plan, step, change)
    finally:
        adopt(old, standby)
    assert "rebuild" not in evidence and evidence["fence"]["already"] is True
    assert set(evidence["phases"]) == {"fence", "replay", "promote", "demote"}
    home_with_every_row(pg_pair)

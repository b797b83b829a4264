"""The promote step against a real PostgreSQL primary and streaming standby (and a real
sshd for the `ssh-stop` fence): rows committed on the primary are on the promoted node;
a standby over its lag budget or not streaming is refused with a named state and nothing
is fenced or promoted; an old primary that cannot be reached is fenced by the plan's
STONITH command, or the step asks a person and promotes once they said done (or, in the
older form, the run waits in a human step `fence-primary`); a crashed primary's writes
after its last checkpoint count in the data lost; a resumed attempt recognises the
promotion it made. Readiness reads the pair as it is: streaming, lag within budget (the
plan's lag probe's reading too, which also joins the promotion's decision), the same
timeline, the fence path (a dry run of the STONITH command) and the replication slots."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller import fencing
from controller.backends import Backends
from controller.db import parse_lsn
from controller.drill.processes import stop_pid
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.fencing import Fence
from controller.journal import Journal
from controller.model import PermanentError, Phase, StepStatus
from controller.plan import FailoverPlan
from controller.readiness import checks
from controller.steps import StepContext, promote
from tests.contract.db.conftest import node, ssh_options
from tests.unit.test_engine import World, make_plan

Pair = tuple[PostgresServer, PostgresServer]
ROWS = "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 3) g"
COUNT = [{"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "3"}]


def plan_for(pair: Pair, *, fence: dict[str, Any], person: bool = False,
             options: dict[str, Any] | None = None, primary: dict[str, Any] | None = None,
             **params: Any) -> FailoverPlan:
    old, standby = pair

    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"].append({"name": "pg", "role": "database", "kind": "postgres",
                                 "options": options or {}})
        steps = [{"name": "fence-primary", "action": "manual",
                  "params": {"instructions": "power off the old primary"}}] if person else []
        steps.append({"name": "promote-db", "action": "promote", "backend": "pg",
                      "retries": 0, "timeout": "2m", "params": {
                          "standby": node(standby).model_dump(by_alias=True),
                          "primary": primary or node(old).model_dump(by_alias=True),
                          "fence": fence, "validation": COUNT, **params}})
        spec["steps"] = steps
    return make_plan(mutate)


def perform(plan: FailoverPlan, *, change: dict[str, Any] | None = None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what prepare journaled, what apply returned), under a step's fence."""
    step = plan.spec.steps[-1]
    ctx = StepContext(plan=plan, run_id="run-1", level=1, backends=Backends(plan),
                      lookup_evidence=lambda run, name: {})
    with fencing.scope(Fence(5, "test-1", label="run-1/promote-db")):
        change = promote.KIND.prepare(step, ctx) if change is None else change
        return change, promote.KIND.apply(step, ctx, change)


def test_a_sql_fence_then_the_promotion_keeps_every_committed_row(pg_pair: Pair) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    _, evidence = perform(plan_for(pg_pair, fence={"method": "sql",
                                                   "command": ["/bin/false"]}))
    assert old.psql("SHOW default_transaction_read_only") == "on"
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    assert standby.psql("SELECT count(*) FROM orders") == "3"
    assert evidence["fence"]["how"] == "sql" and evidence["timeline"] == 2
    assert evidence["rpoBytes"] == 0 and evidence["lsnReached"] == evidence["primaryLastLsn"]
    assert evidence["validation"] == [{"name": "orders", "value": "3", "passed": True}]
    standby.psql("INSERT INTO orders VALUES (4, 'after')")  # the new primary takes writes


def test_validation_runs_read_only_on_the_promoted_node(pg_pair: Pair) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    write = [{"name": "write", "query": "INSERT INTO orders VALUES (9, 'x') RETURNING id"}]
    with pytest.raises(PermanentError, match="read-only transaction"):
        perform(plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/false"]},
                         validation=write))
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"  # promoted, then checked
    assert standby.psql("SELECT count(*) FROM orders") == "3"


def test_an_ssh_stop_fence_stops_the_old_primary_by_pid(pg_pair: Pair, sshd: SshServer,
                                                        tmp_path: Path) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    pid = old.pid
    plan = plan_for(pg_pair, fence={"method": "ssh-stop", "command": ["/bin/false"]},
                    options={"ssh": ssh_options(sshd, tmp_path)},
                    primary=node(old, ssh="127.0.0.1", sshPort=sshd.port).model_dump(
                        by_alias=True))
    _, evidence = perform(plan)
    old.pid = None  # stopped by the step, not by the fixture
    fence = evidence["fence"]
    assert fence["how"] == "ssh-stop" and fence["pid"] == pid
    assert fence["host"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    assert not (old.data / "postmaster.pid").exists()
    assert evidence["rpoBytes"] == 0  # the shutdown checkpoint reached the standby
    assert standby.psql("SELECT count(*) FROM orders") == "3"


def test_writes_a_crashed_primary_made_after_its_last_checkpoint_count_as_lost(
        pg_pair: Pair) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    checkpoint = old.psql("CHECKPOINT; SELECT checkpoint_lsn FROM pg_control_checkpoint()")
    for _ in range(400):  # the standby has replayed the checkpoint
        if standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{checkpoint}'") == "t":
            break
        time.sleep(0.05)
    standby.psql("ALTER SYSTEM SET primary_conninfo = ''")  # then it hears no more
    standby.psql("SELECT pg_reload_conf()")
    for _ in range(400):
        if standby.psql("SELECT count(*) FROM pg_stat_wal_receiver") == "0":
            break
        time.sleep(0.05)
    old.psql("SET synchronous_commit = on; "  # on disk when committed
             "INSERT INTO orders SELECT g, 'late ' || g FROM generate_series(4, 500) g")
    pid, old.pid = old.pid, None
    assert pid is not None
    stop_pid(pid, signal.SIGQUIT)  # a crash: no shutdown checkpoint
    _, evidence = perform(plan_for(pg_pair, fence={"method": "ssh-stop",
                                                   "command": ["/bin/false"]}))
    fence = evidence["fence"]
    assert fence["already"] is True and fence["lastLsn"] == checkpoint
    assert evidence["primaryLastLsnFrom"].startswith("pg_waldump")
    end = parse_lsn(evidence["primaryLastLsn"])
    assert end == parse_lsn(fence["walEnd"]) > parse_lsn(checkpoint)
    assert evidence["rpoBytes"] == end - parse_lsn(evidence["lsnReached"]) > 0
    assert standby.psql("SELECT count(*) FROM orders") == "3"  # what it had


def test_a_standby_over_its_lag_budget_is_refused(pg_pair: Pair) -> None:
    old, standby = pg_pair
    standby.psql("SELECT pg_wal_replay_pause()")
    old.psql("INSERT INTO orders SELECT g, repeat('x', 1000) FROM generate_series(1, 2000) g")
    with pytest.raises(promote.Refused, match="lag-over-budget: .* bytes behind the primary "
                       r"\(budget 1024 bytes, params.rpoBytes\)"):
        perform(plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/false"]},
                         rpoBytes=1024))
    assert old.psql("SHOW default_transaction_read_only") == "off"  # nothing fenced
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"


def test_a_standby_that_does_not_stream_is_refused(pg_pair: Pair) -> None:
    old, standby = pg_pair
    standby.psql("ALTER SYSTEM SET primary_conninfo = ''")
    standby.psql("SELECT pg_reload_conf()")
    for _ in range(400):  # the WAL receiver stops once it rereads its configuration
        if standby.psql("SELECT count(*) FROM pg_stat_wal_receiver") == "0":
            break
        time.sleep(0.05)
    with pytest.raises(promote.Refused, match=r"standby-not-streaming: .* does not stream "
                       r"from the primary"):
        perform(plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/false"]}))
    assert old.psql("SHOW default_transaction_read_only") == "off"
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"


def test_an_unreachable_primary_is_fenced_by_the_plans_command(pg_pair: Pair,
                                                               tmp_path: Path) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    old.wait_streaming()
    old.stop()  # the old primary's host is gone
    marker = tmp_path / "fenced"
    hook = tmp_path / "stonith"
    hook.write_text(f"#!{sys.executable}\nimport pathlib, sys\n"
                    f"pathlib.Path({str(marker)!r}).write_text(' '.join(sys.argv[1:]))\n")
    hook.chmod(0o755)
    _, evidence = perform(plan_for(pg_pair, fence={"method": "sql",
                                                   "command": [str(hook), "dc-a-db"]}))
    assert marker.read_text() == "dc-a-db"
    assert evidence["fence"]["how"] == f"command {hook}"
    assert "does not answer" in evidence["fence"]["unreachable"]
    assert evidence["primaryLastLsn"] is None
    assert standby.psql("SELECT count(*) FROM orders") == "3"


def test_an_unreachable_primary_without_a_command_waits_for_a_person(
        pg_pair: Pair, journal: Journal) -> None:
    old, standby = pg_pair
    old.stop()
    world = World(plan_for(pg_pair, fence={"method": "sql"}, person=True,
                           validation=[]), journal)
    world.outage()
    for _ in range(3):
        world.tick(False)
    assert world.run().phase is Phase.AWAITING_APPROVAL
    assert [s.status for s in world.steps()] == [StepStatus.AWAITING_PERSON,
                                                 StepStatus.PENDING]
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"
    world.engine.done(world.run().id, "fence-primary", actor="oncall")
    for _ in range(3):
        world.tick(False)
    step = world.steps()[1]
    assert step.status is StepStatus.SUCCEEDED, step.error
    assert step.evidence["fence"]["how"] == "a person (step fence-primary)"
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"


def test_an_unreachable_primary_without_a_command_makes_the_step_ask_a_person(
        pg_pair: Pair, journal: Journal) -> None:
    old, standby = pg_pair
    old.psql(ROWS)
    old.stop()
    world = World(plan_for(pg_pair, fence={"method": "sql"}), journal)
    world.outage()
    for _ in range(3):
        world.tick(False)
    run = world.run()
    (asking,) = world.steps()
    assert run.phase is Phase.AWAITING_APPROVAL and asking.status is StepStatus.AWAITING_PERSON
    assert asking.error is not None and "cannot be reached" in asking.error
    assert f"failoverctl done {run.id} promote-db" in asking.error
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"
    world.engine.done(run.id, "promote-db", actor="oncall")
    for _ in range(3):
        world.tick(False)
    (step,) = world.steps()
    assert step.status is StepStatus.SUCCEEDED, step.error
    assert step.evidence["fence"]["how"] == "a person (oncall, said done)"
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    assert standby.psql("SELECT count(*) FROM orders") == "3"


def test_a_resumed_attempt_recognises_the_promotion_it_made(pg_pair: Pair) -> None:
    old, _ = pg_pair
    old.psql(ROWS)
    plan = plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/false"]})
    change, first = perform(plan)
    _, again = perform(plan, change=change)  # the first answer was lost: tried again
    assert again["alreadyPromoted"] is True and again["timeline"] == first["timeline"] == 2
    assert again["validation"] == [{"name": "orders", "value": "3", "passed": True}]


def test_readiness_of_a_healthy_pair(pg_pair: Pair) -> None:
    old, _ = pg_pair
    old.psql("SELECT pg_create_physical_replication_slot('spare')")
    probe = {"kind": "postgres", "options": {"host": str(old.sock), "port": old.port,
                                             "standby": "standby"}}
    plan = plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/true"]},
                    slotLimit=1 << 20, lagProbe=probe)
    found = {c.name.split(": ", 1)[1]: c for c in checks(plan, Backends(plan))
             if c.name.startswith("step ")}
    assert all(c.ok for c in found.values()), found
    standby = found["standby streaming within budget"].detail
    assert "streaming on timeline 1" in standby and "standby 'standby' lag" in standby
    assert found["replication slots"].detail == "1 slot(s), each within 1048576 bytes"
    assert found["fence command"].detail == "/bin/true is executable"


def hook(tmp: Path, *, dry_run_exit: int) -> str:
    """A STONITH hook whose `--dry-run` exits `dry_run_exit`."""
    path = tmp / "stonith"
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --dry-run ] && exit {dry_run_exit}\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def readiness(plan: FailoverPlan) -> dict[str, Any]:
    return {c.name.split(": ", 1)[1]: c for c in checks(plan, Backends(plan))
            if c.name.startswith("step ")}


def test_readiness_says_what_keeps_the_pair_from_a_promotion(pg_pair: Pair,
                                                            tmp_path: Path) -> None:
    old, standby = pg_pair
    old.psql("SELECT pg_create_physical_replication_slot('spare', true)")
    standby.psql("SELECT pg_wal_replay_pause()")
    old.psql("INSERT INTO orders SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g")
    plan = plan_for(pg_pair, fence={"method": "sql", "command": [hook(tmp_path,
                                                                      dry_run_exit=3)],
                                    "dryRun": True}, slotLimit=1 << 20, rpoBytes=1024)
    found = readiness(plan)
    assert not found["standby streaming within budget"].ok
    assert re.search(r"lag-over-budget: .* bytes behind the primary \(budget 1024 bytes",
                     found["standby streaming within budget"].detail)
    assert not found["fence command"].ok and "exited 3" in found["fence command"].detail
    slots = found["replication slots"]
    assert not slots.ok and re.search(r"replication slots keep too much WAL: spare \d+ "
                                      r"bytes \(inactive\) \(limit 1048576, "
                                      r"params.slotLimit\)", slots.detail), slots.detail
    assert found["fence path"].ok  # SQL reaches the primary: a sql fence would work
    ok = plan_for(pg_pair, fence={"method": "sql", "command": [hook(tmp_path,
                                                                    dry_run_exit=0)],
                                  "dryRun": True})
    assert readiness(ok)["fence command"].detail.endswith("stonith --dry-run exited 0")


def test_readiness_refuses_a_standby_on_another_timeline(pg_pair: Pair) -> None:
    old, standby = pg_pair
    other = old.standby(standby.base.parent / "other", name="other")
    try:
        old.wait_streaming("other")
        standby.psql("SELECT pg_promote()")  # a primary on timeline 2; `other` stays on 1
        plan = plan_for((standby, other), fence={"method": "sql", "command": ["/bin/true"]})
        found = readiness(plan)["standby streaming within budget"]
        assert not found.ok
        assert "is on timeline 1, the primary on 2: rebuild the standby" in found.detail
    finally:
        other.stop()


def test_the_lag_probes_reading_joins_readiness_and_the_decision(pg_pair: Pair) -> None:
    old, standby = pg_pair
    probe = {"kind": "postgres", "options": {"host": str(old.sock), "port": old.port,
                                             "standby": "nosuch"}}
    plan = plan_for(pg_pair, fence={"method": "sql", "command": ["/bin/true"]},
                    lagProbe=probe)
    found = readiness(plan)["standby streaming within budget"]
    assert not found.ok and "standby 'nosuch' is not connected" in found.detail
    with pytest.raises(promote.Refused, match=r"standby-not-streaming: .* \(lag probe: "
                       r".*standby 'nosuch' is not connected\)"):
        perform(plan)
    assert old.psql("SHOW default_transaction_read_only") == "off"  # nothing fenced
    assert standby.psql("SELECT pg_is_in_recovery()") == "t"

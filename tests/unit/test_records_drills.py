"""A drill the operator runs (`failoverctl drill fop/NAME`: a planned failover, then a
failback, asked for with the drill's reasons) is judged when its failback is archived: the
verdict lands under `drills/<plan>/` like a sandbox drill's, so readiness counts it and
`history --drills` lists it. And when the controller stops, the runs a failed store left
unarchived get one last, bounded attempt (`flush`); what stays is logged and kept."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from controller import readiness
from controller.backends import Backends
from controller.journal import Journal
from controller.model import Phase
from controller.plan_records import DirectoryRecordsOptions, RecordsSpec
from controller.records import archive, drills, history
from controller.records.store import DirectoryStore, open_store
from tests.unit.test_engine import World, make_plan
from tests.unit.test_records_archive import with_records

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "manifests/drills/verdict.schema.json").read_text())


def settle(world: World, phase: Phase) -> None:
    for _ in range(20):
        world.tick(True)
        if world.run().finished_at is not None:
            break
    assert world.run().phase is phase, world.run()


def drill(world: World, failover_reason: str = drills.FAILOVER_REASON) -> None:
    """What `failoverctl drill fop/NAME` asks the operator for, in the same words."""
    world.engine.request("failover", actor="dr-team", level=3, reason=failover_reason)
    settle(world, Phase.FAILED_OVER)
    world.engine.request("failback", actor="dr-team", reason=drills.FAILBACK_REASON)
    settle(world, Phase.HEALTHY)


def test_a_drill_run_through_requests_is_judged_archived_and_counted(
        journal: Journal, tmp_path: Path) -> None:
    plan = make_plan(with_records(tmp_path / "records", drillEvery="30d"))
    assert plan.spec.records is not None
    world = World(plan, journal)
    world.tick(True)
    world.engine.request("failover", actor="oncall", level=3, reason="dc-a power work")
    settle(world, Phase.FAILED_OVER)  # a planned failover and failback: no drill
    world.engine.request("failback", actor="oncall", reason="power work done")
    settle(world, Phase.HEALTHY)
    store = open_store(plan.spec.records)
    assert list(store.keys("drills/")) == []

    drill(world)
    failover, back = [r.id for r in journal.runs(plan.name, limit=2)][::-1]
    [key] = store.keys("drills/memory-drill/")
    assert key.endswith(f"-{failover}.json")
    doc = json.loads(store.get(key))
    jsonschema.validate({k: v for k, v in doc.items() if k not in ("kind", "finishedAt")},
                        SCHEMA)
    assert doc["kind"] == "drill" and doc["passed"] is True
    assert [(c["stage"], c["check"], c["ok"]) for c in doc["checks"]] == [
        ("failover", "failed over", True), ("failover", "failover steps succeeded", True),
        ("failover", "time targets met", True), ("failback", "failed back", True),
        ("failback", "failback steps succeeded", True)]
    assert doc["failover"]["run"]["id"] == failover and doc["failback"]["run"]["id"] == back
    assert doc["finishedAt"] == journal.run(back).finished_at  # type: ignore[union-attr]
    assert doc["objectives"]["rto"]["met"] is True

    [listed] = history.drills(store, plan.name)
    assert listed.passed and listed.key == key
    [check] = [c for c in readiness.checks(plan, Backends(plan), now=world.clock.now())
               if c.name == "records: drill passed"]
    assert check.ok, check.detail


def test_a_drill_failback_without_the_drills_failover_is_a_failed_drill(
        journal: Journal, tmp_path: Path) -> None:
    plan = make_plan(with_records(tmp_path / "records"))
    assert plan.spec.records is not None
    world = World(plan, journal)
    world.tick(True)
    drill(world, failover_reason="dc-a power work")
    store = open_store(plan.spec.records)
    [listed] = history.drills(store, plan.name)
    assert not listed.passed and listed.failed_checks == ["failover ran"]
    [key] = store.keys("drills/")
    said = json.loads(store.get(key))["checks"][0]["detail"]
    assert said.startswith("no failover asked for as a drill ('DR drill: planned failover")


# --- the last attempt on stop -------------------------------------------------------------


def unreachable(tmp_path: Path) -> tuple[Path, RecordsSpec]:
    """A directory store under a regular file: every write fails (ENOTDIR)."""
    blocker = tmp_path / "mount"
    blocker.write_text("not mounted")
    return blocker, RecordsSpec.model_validate(
        {"store": {"kind": "directory", "options": {"path": str(blocker / "records")}}})


def test_flush_archives_what_waits_for_a_retry_when_the_store_is_back(
        journal: Journal, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker, spec = unreachable(tmp_path)
    world = World(make_plan(with_records(blocker / "records")), journal)
    world.tick(True)
    drill(world)
    waiting = journal.unarchived("memory-drill")
    assert len(waiting) == 2
    archiver = world.engine.ender.archiver
    assert archiver.due > world.clock.now()  # a retry is pending, after the back-off

    with caplog.at_level(logging.WARNING, logger="controller.records.archive"):
        left = archive.flush([archiver], deadline=time.monotonic() + 10)
    assert left == {"memory-drill": waiting}  # still unreachable: kept, and said
    assert caplog.messages[-1] == (
        f"memory-drill: 2 ended runs NOT archived before the controller stopped "
        f"({', '.join(waiting)}); they stay in the journal, archived when the controller "
        "runs again")

    blocker.unlink()  # the store is back before the back-off ran out
    assert archive.flush([archiver], deadline=time.monotonic() + 10) == {}
    assert journal.unarchived("memory-drill") == []
    store = open_store(spec)
    assert sorted(store.keys("runs/")) == sorted(
        f"runs/memory-drill/{r}.{ext}" for r in waiting for ext in ("json", "md"))
    [listed] = history.drills(store, "memory-drill")  # the drill's verdict too
    assert listed.passed


class Hanging(DirectoryStore):
    """A real directory store whose writes hang until released (a stuck mount)."""

    def __init__(self, root: Path):
        super().__init__(DirectoryRecordsOptions(path=str(root)))
        self.release = threading.Event()

    def put(self, key: str, body: bytes, *, content_type: str) -> None:
        self.release.wait()
        super().put(key, body, content_type=content_type)


def test_flush_gives_up_at_its_deadline_on_a_store_that_hangs(
        journal: Journal, tmp_path: Path) -> None:
    world = World(make_plan(), journal)  # keeps no records: the engine archives nothing
    world.tick(True)
    world.engine.request("failover", actor="oncall", level=3, reason="dc-a power work")
    settle(world, Phase.FAILED_OVER)
    ended = journal.unarchived("memory-drill")
    hanging = Hanging(tmp_path / "records")
    spec = make_plan(with_records(tmp_path / "records")).spec.records
    archiver = archive.Archiver("memory-drill", spec, journal, world.clock.now,
                                store=lambda _: hanging)
    try:
        assert archive.flush([archiver], deadline=time.monotonic() + 0.5) == {
            "memory-drill": ended}
        assert list(hanging.keys("runs/")) == []
    finally:
        hanging.release.set()  # the write goes through after all: nothing half-done
    for _ in range(200):
        if not journal.unarchived("memory-drill"):
            break
        time.sleep(0.05)
    assert journal.unarchived("memory-drill") == []

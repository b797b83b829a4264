"""Every finished run is archived to the plan's records store when it ends (JSON +
Markdown: steps, evidence, decisions, audit, notices), marked archived in the journal,
and only then may `prune` remove it; drills' verdicts are archived and readiness warns
when no drill passed within `drillEvery`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from controller import readiness
from controller.backends import Backends
from controller.journal import Journal
from controller.model import Phase
from controller.plan_records import RecordsSpec
from controller.records import archive, history
from controller.records.store import open_store
from tests.unit.test_engine import World, make_plan
from tests.unit.test_records_store import store as directory_store

DAY = 86_400.0


def with_records(root: Path, **extra: Any) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        spec["records"] = {"store": {"kind": "directory", "options": {"path": str(root)}},
                           "keep": "180d", **extra}
    return mutate


def failover_and_back(world: World) -> tuple[str, str]:
    assert world.outage().phase is Phase.FAILED_OVER
    failover = world.run().id
    world.engine.request("failback", actor="oncall", reason="dc-a is back")
    for _ in range(10):
        world.tick(True)
    assert world.run().kind == "failback" and world.run().phase is Phase.HEALTHY
    return failover, world.run().id


def test_each_run_is_archived_when_it_ends_and_pruned_only_after(
        journal: Journal, tmp_path: Path) -> None:
    plan = make_plan(with_records(tmp_path / "records"))
    world = World(plan, journal)
    failover, back = failover_and_back(world)

    store = open_store(plan.spec.records)
    assert sorted(store.keys("runs/")) == sorted(
        f"runs/memory-drill/{r}.{ext}" for r in (failover, back) for ext in ("json", "md"))
    doc = json.loads(store.get(f"runs/memory-drill/{failover}.json"))
    assert doc["kind"] == "run" and doc["run"]["phase"] == "FailedOver"
    assert [s["name"] for s in doc["steps"]][:2] == ["notify-incident", "redirect-traffic"]
    assert doc["steps"][1]["evidence"]  # what a failback reverts from
    assert doc["decisions"] and doc["audit"] and doc["notices"]
    assert {n["action"] for n in doc["notices"]} <= {"notify-pending", "notify",
                                                     "notify-failed"}
    md = store.get(f"runs/memory-drill/{failover}.md").decode()
    assert "| 2 | redirect-traffic | traffic |" in md and "## Audit" in md
    assert journal.unarchived("memory-drill") == []
    assert [a["run_id"] for a in journal.audit_trail(plan="memory-drill")
            if a["action"] == archive.ARCHIVED] == [failover, back]

    world.clock.advance(40 * DAY)
    pruned = journal.prune(before=world.clock.now() - 30 * DAY)
    assert sorted(pruned.runs) == sorted([failover, back]) and pruned.unarchived == []
    found = history.find_run(store, failover)  # the archive is the record now
    assert found["run"]["id"] == failover and journal.run(failover) is None


def test_a_run_of_a_plan_without_records_is_never_pruned_unforced(journal: Journal) -> None:
    world = World(make_plan(), journal)
    runs = failover_and_back(world)
    world.clock.advance(40 * DAY)
    pruned = journal.prune(before=world.clock.now() - 30 * DAY)
    assert pruned.runs == [] and sorted(pruned.unarchived) == sorted(runs)


def verdict(plan: str, at: float, passed: bool) -> dict[str, Any]:
    return {"plan": plan, "passed": passed, "faults": [], "objectives": {},
            "timeline": {"injectedAt": at - 60, "failedBackAt": at},
            "checks": [{"check": "failed over", "ok": True, "detail": "", "stage": "s"},
                       {"check": "time targets met", "ok": passed, "detail": "", "stage": "s"}],
            "failover": {"run": {"id": f"{plan}-failover-{int(at)}-abcdef"}}}


def test_readiness_warns_without_a_passing_drill_within_drill_every(
        journal: Journal, tmp_path: Path) -> None:
    plan = make_plan(with_records(tmp_path / "records", drillEvery="30d"))
    assert plan.spec.records is not None
    store, backends = open_store(plan.spec.records), Backends(plan)
    now = 1_800_000_000.0

    def drill_check() -> readiness.Check:
        return next(c for c in readiness.checks(plan, backends, now=now)
                    if c.name == "records: drill passed")

    check = drill_check()
    assert not check.ok and "no passing drill of memory-drill in the last 720h (no drill " \
                            "recorded since" in check.detail
    assert "`failoverctl drill`" in check.detail

    archive.archive_drill(store, verdict("memory-drill", now - 40 * DAY, True))  # too old
    key = archive.archive_drill(store, verdict("memory-drill", now - DAY, False))
    assert key.startswith("drills/memory-drill/") and key.endswith(
        f"-memory-drill-failover-{int(now - DAY)}-abcdef.json")
    check = drill_check()
    assert not check.ok and "the last drill within it, at" in check.detail
    assert "failed" in check.detail

    archive.archive_drill(store, verdict("memory-drill", now - 2 * DAY, True))
    check = drill_check()
    assert check.ok and check.detail.startswith("last passed ") and "48h ago" in check.detail
    drills = history.drills(store, "memory-drill", since=now - 30 * DAY)
    assert [(d.passed, d.failed_checks) for d in drills] == [
        (True, []), (False, ["time targets met"])]


def test_the_records_spec_is_part_of_the_plan(tmp_path: Path) -> None:
    plan = make_plan(with_records(tmp_path, drillEvery="90d"))
    assert isinstance(plan.spec.records, RecordsSpec)
    assert plan.spec.records.drill_every == 90 * DAY
    assert make_plan().spec.records is None


def test_a_drill_archives_its_runs_and_its_verdict_and_readiness_counts_it(
        journal: Journal, tmp_path: Path) -> None:
    from controller.drill.runner import run_drill

    plan = make_plan(with_records(tmp_path / "records"))
    assert plan.spec.records is not None
    verdict = run_drill(plan, journal, tmp_path / "out", echo=None)
    assert verdict["passed"], verdict["checks"]

    store = open_store(plan.spec.records)
    [key] = store.keys("drills/memory-drill/")
    assert json.loads(store.get(key))["kind"] == "drill"
    runs = history.runs(store, "memory-drill").runs
    assert [r.run["kind"] for r in runs] == ["failover", "failback"]
    assert key.endswith(f"-{runs[0].run['id']}.json")
    [check] = [c for c in readiness.checks(plan, Backends(plan))
               if c.name == "records: drill passed"]
    assert check.ok, check.detail


def test_a_drill_verdict_the_store_refuses_is_said_and_the_drill_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("x")
    plan = make_plan(with_records(tmp_path / "file" / "records"))
    with caplog.at_level(logging.WARNING, logger="controller.records.archive"):
        archive.record_drill(plan.spec.records, verdict("memory-drill", 1_800_000_000, True))
    [said] = caplog.messages
    assert said.startswith("memory-drill: the drill's verdict was NOT archived, so readiness "
                           "does not count this drill: RecordsError: cannot write record "
                           "drills/memory-drill/")
    good = directory_store(tmp_path / "records")
    archive.record_drill(RecordsSpec.model_validate({"store": {
        "kind": "directory", "options": {"path": str(good.root)}}}),
        verdict("memory-drill", 1_800_000_000, True))
    assert len(list(good.keys("drills/memory-drill/"))) == 1

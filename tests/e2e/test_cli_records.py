"""`failoverctl history` and `failoverctl report RUN --plan` as a user runs them: runs and
drills read back from the plan's records store after the journal has forgotten them; a
damaged record named; a plan without records told how to keep them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from controller.journal import Journal
from tests.e2e.test_cli import cli, file_plan


def plan_with_records(tmp_path: Path) -> Path:
    path = file_plan(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["spec"]["records"] = {"store": {"kind": "directory",
                                         "options": {"path": str(tmp_path / "records")}},
                               "keep": "180d", "drillEvery": "30d"}
    path.write_text(yaml.safe_dump(data))
    return path


def test_history_and_report_read_the_records_store_after_the_journal_forgot(
        tmp_path: Path) -> None:
    plan, journal = plan_with_records(tmp_path), tmp_path / "j.db"
    drill = cli("drill", str(plan), "--out", str(tmp_path / "out"), journal=journal)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    failover = cli("failover", str(plan), "--yes", "--reason", "dc-a power work",
                   journal=journal)
    assert failover.returncode == 0, failover.stdout + failover.stderr

    j = Journal(journal)
    drill_runs = [r.id for r in reversed(j.runs("memory-drill"))][:2]
    j.close()
    pruned = cli("prune", "--older-than", "0s", "-o", "json", journal=journal)
    assert pruned.returncode == 0, pruned.stderr
    removed = json.loads(pruned.stdout)  # the drill's runs are archived: they go; the
    assert sorted(removed["runs"]) == sorted(drill_runs)  # open incident's run stays
    assert removed["unarchived"] == []

    gone = cli("report", drill_runs[0], journal=journal)
    assert gone.returncode == 2 and "add --plan PLAN" in gone.stderr
    rep = cli("report", drill_runs[0], "--plan", str(plan), "-o", "json", journal=journal)
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert data["run"]["id"] == drill_runs[0] and data["run"]["phase"] == "FailedOver"
    assert [s["name"] for s in data["steps"]][:2] == ["notify-incident", "redirect-traffic"]
    md = cli("report", drill_runs[0], "--plan", str(plan), "-o", "markdown", journal=journal)
    assert "| 2 | redirect-traffic | traffic |" in md.stdout

    res = cli("history", str(plan), "--drills", "-o", "json", journal=journal)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert [(r["kind"], r["phase"]) for r in listed["runs"]] == [
        ("failover", "FailedOver"), ("failback", "Healthy"), ("failover", "FailedOver")]
    assert listed["runs"][2]["reason"] == "dc-a power work"
    assert [d["passed"] for d in listed["drills"]] == [True] and listed["damaged"] == []
    text = cli("history", str(plan), "--drills", "--since", "1d", journal=journal)
    assert text.returncode == 0
    assert "runs of memory-drill since" in text.stdout and "PASSED" in text.stdout
    assert drill_runs[0] in text.stdout

    record = tmp_path / "records" / listed["runs"][1]["key"]
    record.chmod(0o644)
    record.write_text("{ cut short")
    damaged = cli("history", str(plan), "-o", "json", journal=journal)
    assert damaged.returncode == 1
    assert len(json.loads(damaged.stdout)["runs"]) == 2  # the others are still listed
    assert f"archived record {listed['runs'][1]['key']} in directory" in damaged.stderr
    assert "is damaged" in damaged.stderr


def test_without_records_history_says_how_to_keep_them_and_prune_keeps_the_runs(
        tmp_path: Path) -> None:
    plan, journal = file_plan(tmp_path), tmp_path / "j.db"
    res = cli("history", str(plan), journal=journal)
    assert res.returncode == 2
    assert "plan memory-drill keeps no records: add spec.records" in res.stderr
    drill = cli("drill", str(plan), "--out", str(tmp_path / "out"), journal=journal)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    kept = cli("prune", "--older-than", "0s", journal=journal)
    assert kept.returncode == 0, kept.stderr
    assert "removed 0 runs" in kept.stdout
    assert "kept 2 runs never archived (add spec.records to their plan, or --force)" \
        in kept.stdout
    res = cli("history", str(plan_with_records(tmp_path)), "--since", "soon",
              journal=journal)
    assert res.returncode == 2 and "--since: cannot read duration 'soon'" in res.stderr

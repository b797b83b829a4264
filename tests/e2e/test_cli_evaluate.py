"""A failover through the CLI on a plan that keeps records in a directory: the incident
record is in the store when `failoverctl failover` returns, and `failoverctl evaluate`
reads the run archived when it ended back (and names the one record that is damaged)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from controller.journal import Journal
from controller.plan_records import DirectoryRecordsOptions
from controller.records import incident
from controller.records.store import DirectoryStore
from tests.e2e.test_cli import cli, file_plan


def test_failover_leaves_an_incident_record_and_evaluate_reads_the_archive(
        tmp_path: Path) -> None:
    records = tmp_path / "records"
    path = file_plan(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["spec"]["records"] = {"store": {"kind": "directory",
                                         "options": {"path": str(records)}}}
    path.write_text(yaml.safe_dump(data))
    journal = tmp_path / "j.db"

    res = cli("failover", str(path), "--yes", "--reason", "dc-a power work", journal=journal)
    assert res.returncode == 0, res.stdout + res.stderr
    [run] = Journal(journal).runs("memory-drill")
    store = DirectoryStore(DirectoryRecordsOptions(path=str(records)))
    versions = [k for k in store.keys(incident.prefix("memory-drill", run.id))
                if k.endswith(".json")]
    last = json.loads(store.get(versions[-1]))
    assert last["closed"] is True and last["phase"] == "FailedOver"
    steps = Journal(journal).steps(run.id)
    assert [a["step"] for a in last["actions"] if a["step"]] == [
        s.name for s in sorted(steps, key=lambda s: s.started_at or 0) if s.started_at]
    assert {"redirect-traffic", "dns-cutover", "link-test"} <= {
        a["step"] for a in last["actions"] if a["status"] == "succeeded"}
    judged = [s.met for s in steps if s.met is not None]

    assert f"runs/memory-drill/{run.id}.json" in store.keys("runs/")  # archived as it ended
    store.put("runs/memory-drill/damaged.json", b"{}", content_type="application/json")
    damaged = records / "runs/memory-drill/damaged.json"
    damaged.chmod(0o644)
    damaged.write_text('{"kind": "run"}')

    out = cli("evaluate", str(path), "--since", "1d", "-o", "json", journal=journal)
    assert out.returncode == 1, out.stderr  # evaluated, and one record could not be read
    ev = json.loads(out.stdout)
    assert ev["runIds"] == [run.id]
    assert ev["responseSpeed"]["acknowledgementSeconds"]["max"] == 0  # a person asked
    assert ev["recoveryEfficiency"]["targets"] == {
        "met": sum(judged), "total": len(judged), "percent": 100.0}
    assert ev["mttr"][0]["level"] == "-" and ev["mttr"][0]["met"] is True
    assert ev["mttr"][0]["meanSeconds"] <= time.time() - run.detected_at
    [skipped] = ev["damaged"]
    assert skipped["key"] == "runs/memory-drill/damaged.json"
    assert "is damaged: its SHA-256 is" in skipped["error"]
    assert "error: left out: archived record runs/memory-drill/damaged.json" in out.stderr

    damaged.unlink()
    text = cli("evaluate", "--store", str(records), journal=journal)
    assert text.returncode == 0, text.stderr
    assert "# Evaluation of failovers: all plans" in text.stdout
    assert f"Overall: 100 % ({len(judged)}/{len(judged)})" in text.stdout
    assert "| redirect-traffic | 100 % (1/1) |" in text.stdout

    missing = cli("evaluate", journal=journal)
    assert missing.returncode == 2
    assert "give a PLAN (file or fop/NAME) whose spec.records names the store" in missing.stderr

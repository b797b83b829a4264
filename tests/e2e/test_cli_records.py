"""`failoverctl history` and `failoverctl report RUN --plan|--store` as a user runs them:
runs and drills read back from a records store (a plan's, or one named with `--store`, a
directory or S3 on moto's server) after the journal has forgotten them; a run found
nowhere told which option to give; a damaged record named; a plan without records told
how to keep them."""

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
    assert gone.returncode == 2
    assert ("a run archived in a records store: add --plan PLAN (the store of the plan "
            "that ran it, spec.records) or --store DIR|s3://BUCKET/PREFIX") in gone.stderr
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


def renamed(path: Path, name: str) -> Path:
    """The plan file again, under another plan name (same world, same records store)."""
    data = yaml.safe_load(path.read_text())
    data["metadata"]["name"] = name
    out = path.with_name(f"{name}.yaml")
    out.write_text(yaml.safe_dump(data))
    return out


def test_history_of_a_store_lists_every_plans_runs_and_drills_without_a_plan(
        tmp_path: Path) -> None:
    plan, journal = plan_with_records(tmp_path), tmp_path / "j.db"
    other = renamed(plan, "memory-drill-b")
    for p in (plan, other):
        drill = cli("drill", str(p), "--out", str(tmp_path / p.stem), journal=journal)
        assert drill.returncode == 0, drill.stdout + drill.stderr
    records = tmp_path / "records"

    res = cli("history", "--store", str(records), "--drills", "-o", "json", journal=journal)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    assert listed["plan"] is None and listed["store"] == f"directory {records}"
    assert sorted((r["plan"], r["kind"]) for r in listed["runs"]) == [
        ("memory-drill", "failback"), ("memory-drill", "failover"),
        ("memory-drill-b", "failback"), ("memory-drill-b", "failover")]
    assert sorted((d["plan"], d["passed"]) for d in listed["drills"]) == [
        ("memory-drill", True), ("memory-drill-b", True)]
    text = cli("history", "--store", str(records), "--drills", journal=journal)
    assert text.returncode == 0, text.stderr
    assert "runs of every plan since" in text.stdout
    assert "memory-drill-b  failover" in text.stdout and "memory-drill-b  PASSED" in text.stdout

    for argv, said in (
            ((), "give a PLAN (a plan file or fop/NAME: its records store, spec.records) or "
                 "--store DIR|s3://BUCKET/PREFIX (every plan's records)"),
            ((str(plan), "--store", str(records)), "or --store DIR|s3://BUCKET/PREFIX "
                                                  "(every plan's records), not both"),
            (("--store", str(tmp_path / "nowhere")),
             f"--store {tmp_path / 'nowhere'}: no such directory on this host"),
            (("--store", "s3://x"), "--store s3://x: bucket: String should have at least 3 "
                                    "characters (give s3://BUCKET/PREFIX)"),
            (("--store", "s3://dr-records", "--endpoint-url", "no-scheme"),
             "--endpoint-url: Invalid endpoint: no-scheme"),
            (("--store", str(records), "--endpoint-url", "http://127.0.0.1:1"),
             "--endpoint-url, --region and --ca-bundle are for an S3 store")):
        bad = cli("history", *argv, journal=journal)
        assert bad.returncode == 2, (argv, bad.stdout, bad.stderr)
        assert said in bad.stderr, (argv, bad.stderr)


def test_report_finds_a_run_of_any_plan_in_a_store_named_with_store(tmp_path: Path) -> None:
    plan, journal = plan_with_records(tmp_path), tmp_path / "j.db"
    other = renamed(plan, "memory-drill-b")
    drill = cli("drill", str(other), "--out", str(tmp_path / "out"), journal=journal)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    j = Journal(journal)
    run_id = j.runs("memory-drill-b")[-1].id  # the drill's failover
    j.close()
    records, elsewhere = tmp_path / "records", tmp_path / "elsewhere.db"  # a journal
    # that never had the run: another host's, or this one's after `prune`

    rep = cli("report", run_id, "--store", str(records), "-o", "json", journal=elsewhere)
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    assert data["run"]["id"] == run_id and data["run"]["plan"] == "memory-drill-b"
    assert data["run"]["phase"] == "FailedOver"

    nowhere = cli("report", "memory-drill-b-1700000000-abcdef", "--store", str(records),
                  journal=elsewhere)
    assert nowhere.returncode == 2
    assert (f"nor in directory {records}: give the store it was archived in, --plan PLAN "
            "(of the plan that ran it) or --store DIR|s3://BUCKET/PREFIX") in nowhere.stderr
    not_the_plans = cli("report", "memory-drill-b-1700000000-abcdef", "--plan", str(plan),
                        journal=elsewhere)
    assert not_the_plans.returncode == 2
    assert (f"nor in the records store of plan memory-drill (directory {records}): give the "
            "store it was archived in, --plan PLAN") in not_the_plans.stderr
    for argv, said in (
            (("--plan", str(plan), "--store", str(records)),
             "give --plan PLAN or --store DIR|s3://BUCKET/PREFIX, not both"),
            (("--plan", str(plan), "--region", "eu-west-1"),
             "--endpoint-url, --region and --ca-bundle are for an S3 store: add --store "
             "s3://BUCKET/PREFIX")):
        bad = cli("report", run_id, *argv, journal=elsewhere)
        assert bad.returncode == 2, (argv, bad.stdout, bad.stderr)
        assert said in bad.stderr, (argv, bad.stderr)


def test_history_and_report_read_an_s3_store_named_on_the_command_line(
        tmp_path: Path) -> None:
    from controller.drill.servers.moto import CREDENTIALS, MotoServer

    with MotoServer() as moto:
        moto.client("s3").create_bucket(Bucket="dr-records", ObjectLockEnabledForBucket=True)
        plan, journal = plan_with_records(tmp_path), tmp_path / "j.db"
        data = yaml.safe_load(plan.read_text())
        data["spec"]["records"]["store"] = {"kind": "s3", "options": {
            "bucket": "dr-records", "prefix": "failover", "endpointUrl": moto.endpoint}}
        plan.write_text(yaml.safe_dump(data))
        env = {"AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
               "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}
        drill = cli("drill", str(plan), "--out", str(tmp_path / "out"), journal=journal,
                    env=env)
        assert drill.returncode == 0, drill.stdout + drill.stderr

        res = cli("history", "--store", "s3://dr-records/failover", "--endpoint-url",
                  moto.endpoint, "--drills", "-o", "json", journal=journal, env=env)
        assert res.returncode == 0, res.stderr
        listed = json.loads(res.stdout)
        assert listed["store"] == "s3://dr-records/failover/"
        assert [r["kind"] for r in listed["runs"]] == ["failover", "failback"]
        assert [d["passed"] for d in listed["drills"]] == [True]

        run_id = listed["runs"][0]["id"]
        rep = cli("report", run_id, "--store", "s3://dr-records/failover", "--endpoint-url",
                  moto.endpoint, "-o", "json", journal=tmp_path / "elsewhere.db", env=env)
        assert rep.returncode == 0, rep.stderr
        assert json.loads(rep.stdout)["run"]["id"] == run_id
        nowhere = cli("report", "memory-drill-1700000000-abcdef", "--store",
                      "s3://dr-records/failover", "--endpoint-url", moto.endpoint,
                      journal=tmp_path / "elsewhere.db", env=env)
        assert nowhere.returncode == 2
        assert "nor in s3://dr-records/failover/: give the store it was archived in" \
            in nowhere.stderr
        evaluated = cli("evaluate", "--store", "s3://dr-records/failover", "--endpoint-url",
                        moto.endpoint, "-o", "json", journal=journal, env=env)
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["store"] == "s3://dr-records/failover/"

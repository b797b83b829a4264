"""`failoverctl` as a user runs it: real processes, real exit codes, a real SIGKILL."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from controller import testing
from controller.journal import Journal
from controller.model import StepStatus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests/examples/memory-drill.yaml"
LOGIN = pwd.getpwuid(os.getuid()).pw_name  # who a plan file's commands act as


def cli(*args: str, journal: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", "--journal", str(journal), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def file_plan(tmp_path: Path, *, delay: float = 0.0) -> Path:
    """The example plan with its fakes' state in a file, so several processes share it."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    state = str(tmp_path / "world.json")
    for backend in data["spec"]["backends"]:
        backend["options"]["stateFile"] = state
    for service in data["spec"]["services"]:
        for probe in service["probes"]:
            probe["options"]["stateFile"] = state
    data["spec"]["backends"][0]["options"]["delay"] = delay
    data["spec"]["coordination"] = {"kind": "host",
                                    "options": {"lockDir": str(tmp_path / "locks")}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_exit_codes(tmp_path: Path) -> None:
    ok = cli("validate", *map(str, sorted((ROOT / "manifests/examples").glob("*.yaml"))),
             journal=tmp_path / "j.db")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(EXAMPLE.read_text())
    data["spec"]["trigger"]["availabilityFloor"] = 170
    bad.write_text(yaml.safe_dump(data))
    res = cli("validate", str(bad), "-o", "json", journal=tmp_path / "j.db")
    assert res.returncode == 2
    [result] = json.loads(res.stdout)
    assert result["problems"][0].startswith("spec.trigger.availabilityFloor:")
    assert "Traceback" not in res.stderr
    res = cli("plan", str(bad), journal=tmp_path / "j.db")
    assert res.returncode == 2 and "availabilityFloor" in res.stderr
    assert "Traceback" not in res.stderr


def test_plan_preview_lists_steps_in_order_with_targets(tmp_path: Path) -> None:
    res = cli("plan", str(EXAMPLE), "-o", "json", journal=tmp_path / "j.db")
    assert res.returncode == 0
    steps = json.loads(res.stdout)["steps"]
    assert [s["name"] for s in steps] == ["notify-incident", "redirect-traffic", "dns-cutover",
                                          "link-test"]
    assert [s["target"] for s in steps] == [600, 3600, 7200, 7200]


def test_failover_then_report_json_and_failback(tmp_path: Path) -> None:
    plan, journal = file_plan(tmp_path), tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "planned: dc-a maintenance",
              journal=journal)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FailedOver" in res.stdout
    run_id = res.stdout.split("run ", 1)[1].split()[0].rstrip(":")
    rep = cli("report", run_id, "-o", "json", journal=journal)
    assert rep.returncode == 0
    data = json.loads(rep.stdout)
    assert data["run"]["requestedBy"] == LOGIN
    assert [(s["name"], s["targetSeconds"], s["met"]) for s in data["steps"]] == [
        ("notify-incident", 600, True), ("redirect-traffic", 3600, True),
        ("dns-cutover", 7200, True), ("link-test", 7200, True)]
    junit = cli("report", run_id, "-o", "junit", journal=journal)
    assert junit.stdout.startswith("<testsuite") and 'failures="0"' in junit.stdout
    status = cli("status", "-o", "json", journal=journal)
    assert json.loads(status.stdout)[0]["phase"] == "FailedOver"
    # a second failover of a failed-over plan is refused before anything is asked or run:
    # it would save the backup's values as the "original" and fail back to them
    again = cli("failover", str(plan), "--yes", "--reason", "by mistake", journal=journal)
    assert again.returncode == 2, again.stdout + again.stderr
    assert ("failover of memory-drill refused: nothing to fail over: the plan is already "
            "failed over; fail back first") in again.stderr
    assert len(Journal(journal).runs("memory-drill")) == 1
    back = cli("failback", str(plan), "--yes", "--reason", "dc-a repaired", "-o", "json",
               journal=journal)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["run"]["phase"] == "Healthy"
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["traffic:edge"]["weights"] == {"dc-a": 100, "dc-b": 0}
    assert cli("report", "no-such-run", journal=journal).returncode == 2


def test_on_a_plan_file_the_requester_is_the_login_and_as_cannot_name_another(
        tmp_path: Path) -> None:
    """Nothing proves a name given with --as on a plan file: a failover or failback asked
    for in someone else's name is refused and audited, and nothing is requested."""
    plan, journal = file_plan(tmp_path), tmp_path / "j.db"
    for kind in ("failover", "failback"):
        res = cli(kind, str(plan), "--yes", "--reason", "x", "--as", "alice", journal=journal)
        assert res.returncode == 2, res.stdout + res.stderr
        assert (f"--as alice is refused: on a plan file you request a {kind} as your login, "
                f"{LOGIN}: leave out --as, or ask alice to request it") in res.stderr
        assert "Traceback" not in res.stderr
    j = Journal(journal)
    assert j.runs("memory-drill") == [] and j.pending_request("memory-drill") is None
    assert [(a["actor"], a["action"]) for a in j.audit_trail(plan="memory-drill")] == [
        (LOGIN, "request-refused")] * 2


def test_two_controllers_on_one_host_with_two_journals_act_once(tmp_path: Path) -> None:
    """Two people each run `failoverctl run` on the same plan with their own journal: the
    plan's host lock lets one act; the other never performs a step."""
    plan = file_plan(tmp_path, delay=1.0)
    testing.set_health("dc-a", False, state_file=str(tmp_path / "world.json"))
    procs = [subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(tmp_path / f"{who}.db"), "run",
         str(plan), "--ticks", "40", "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for who in ("alice", "bob")]
    for proc in procs:
        proc.communicate(timeout=120)
    runs = {who: Journal(tmp_path / f"{who}.db").runs("memory-drill")
            for who in ("alice", "bob")}
    assert sorted(len(r) for r in runs.values()) == [0, 1], runs
    [run] = next(r for r in runs.values() if r)
    assert run.phase.value == "FailedOver"
    world = json.loads((tmp_path / "world.json").read_text())
    writers = {(w["holder"], w["token"]) for w in world["traffic:edge"]["writes"]}
    assert len(writers) == 1  # every write by one holder under one token


def test_killed_between_steps_resumes_without_repeating_a_finished_step(tmp_path: Path) -> None:
    plan, journal = file_plan(tmp_path, delay=5.0), tmp_path / "j.db"
    env = {"FAILOVER_LEASE_TTL": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(journal), "failover", str(plan),
         "--yes", "--reason", "kill test", "--level", "3"], cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    first = None
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not journal.exists():
            continue
        j = Journal(journal)
        runs = j.runs()
        if runs:
            steps = {s.name: s for s in j.steps(runs[0].id)}
            if steps["redirect-traffic"].status is StepStatus.RUNNING:
                first = steps["notify-incident"]
                j.close()
                break
        j.close()
    assert first is not None and first.status is StepStatus.SUCCEEDED
    proc.send_signal(signal.SIGKILL)  # mid-step: the traffic shift is sleeping
    proc.wait(timeout=10)
    time.sleep(1.2)  # the dead controller's lease expires
    plan_data = yaml.safe_load(plan.read_text())
    plan_data["spec"]["backends"][0]["options"]["delay"] = 0
    plan.write_text(yaml.safe_dump(plan_data))
    res = cli("run", str(plan), "--ticks", "50", "--interval", "0.1", "--until", "FailedOver",
              journal=journal, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    j = Journal(journal)
    [run] = j.runs()
    steps = {s.name: s for s in j.steps(run.id)}
    assert steps["notify-incident"].attempts == 1
    assert steps["notify-incident"].started_at == first.started_at
    assert steps["redirect-traffic"].status is StepStatus.SUCCEEDED
    assert steps["redirect-traffic"].attempts == 2  # the killed attempt, then the resumed one
    assert steps["redirect-traffic"].evidence["before"] == {"dc-a": 100, "dc-b": 0}
    assert all(s.status is StepStatus.SUCCEEDED for s in steps.values())
    world = json.loads((tmp_path / "world.json").read_text())
    sent = [n["status"] for n in world["notifier:mail"]["sent"]]  # level 3: mail
    assert len([s for s in sent if s.startswith("failover started")]) == 1
    assert len([s for s in sent if s.startswith("failover complete")]) == 1
    assert len(world["notifier:im"]["sent"]) == 1  # the notify-incident step, never re-sent
    assert world["traffic:edge"]["weights"] == {"dc-a": 0, "dc-b": 100}
    j.close()


def test_corrupt_journal_is_reported_not_replaced(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    garbage = b"this is not a database" * 100
    journal.write_bytes(garbage)
    res = cli("status", journal=journal)
    assert res.returncode == 3
    assert "cannot be used" in res.stderr and "Traceback" not in res.stderr
    assert journal.read_bytes() == garbage


def test_drill_with_in_memory_backends_passes(tmp_path: Path) -> None:
    res = cli("drill", str(file_plan(tmp_path)), "--out", str(tmp_path / "out"),
              journal=tmp_path / "j.db")
    assert res.returncode == 0, res.stdout + res.stderr
    verdict = json.loads((tmp_path / "out/verdict.json").read_text())
    assert verdict["passed"] and {c["check"] for c in verdict["checks"]} == {
        "baseline healthy", "failed over", "time targets met", "failed back"}
    assert (tmp_path / "out/failover.junit.xml").exists()
    # the closing line names the reports, the metrics file among them, and they exist
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("drill PASSED") and "drill.prom" in last
    prom = (tmp_path / "out/drill.prom").read_text()
    assert "failover_drill_last_passed_timestamp_seconds" in prom


def test_simulate_reports_trips_and_judges_labels(tmp_path: Path) -> None:
    traces = ROOT / "tests/traces"
    ok = cli("simulate", str(traces / "plan.yaml"), "--trace", str(traces), "-o", "json",
             journal=tmp_path / "j.db")
    assert ok.returncode == 0, ok.stdout[-2000:]
    results = {r["trace"]: r for r in json.loads(ok.stdout)}
    assert results["clean-outage"]["trips"][0]["level"] == 1
    assert results["blip-below-dwell"]["trips"] == []
    wrong = tmp_path / "wrong.jsonl"
    lines = (traces / "blip-below-dwell.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header.update(plan=str(traces / "plan.yaml"), expect={"trip": True, "by": 30})
    wrong.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    bad = cli("simulate", str(traces / "plan.yaml"), "--trace", str(wrong),
              journal=tmp_path / "j.db")
    assert bad.returncode == 1 and "never tripped but must trip by 30 s" in bad.stdout
    missing = cli("simulate", str(traces / "plan.yaml"), "--trace", str(tmp_path / "nope"),
                  journal=tmp_path / "j.db")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_a_requested_failover_reads_as_requested_not_tripped(tmp_path: Path) -> None:
    """No loop has run (no decision) and a person asked for the failover without a level:
    `status` and the report say who asked and why, no level, and no decision yet."""
    plan, journal = file_plan(tmp_path), tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "dc-a power work", "--as", LOGIN,
              journal=journal)  # --as may repeat the login
    assert res.returncode == 0, res.stdout + res.stderr
    status = cli("status", str(plan), journal=journal)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[:2] == ["memory-drill: FailedOver (level -, active site dc-b)",
                         "  no decision yet (the loop has not run)"]
    assert "" not in lines
    run_id = res.stdout.split("run ", 1)[1].split()[0].rstrip(":")
    assert (f"  run {run_id} (failover): FailedOver — requested by {LOGIN}: dc-a power work"
            in lines)
    [entry] = json.loads(cli("status", "-o", "json", journal=journal).stdout)
    assert entry["lastDecision"] is None and entry["level"] is None
    assert (entry["run"]["origin"], entry["run"]["requestedBy"], entry["run"]["level"]) == (
        "request", LOGIN, None)
    assert entry["run"]["cause"] == f"requested by {LOGIN}: dc-a power work"
    report = cli("report", run_id, "-o", "markdown", journal=journal).stdout
    assert f"- Started: requested by {LOGIN}: dc-a power work\n" in report
    assert "phase **FailedOver**, level -\n" in report

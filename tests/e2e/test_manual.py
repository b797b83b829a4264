"""A controlled manual failover as an operator drives it from a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import yaml

from controller.journal import Journal
from controller.model import Phase
from tests.e2e.test_cli import LOGIN, ROOT, cli, file_plan


def read_until(fd: int, needle: str, timeout: float = 60) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk.decode(errors="replace")
    return out


def test_manual_failover_in_a_terminal_previews_confirms_and_follows(tmp_path: Path) -> None:
    plan = file_plan(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(tmp_path / "j.db"), "failover",
         str(plan), "--reason", "dc-a maintenance"],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True)
    os.close(slave)
    screen = read_until(master, "Proceed with the failover")
    assert "would change: weights {'dc-a': 100, 'dc-b': 0} -> {'dc-a': 0, 'dc-b': 100}" in screen
    assert "www.example.test. A ['192.0.2.10'] -> ['198.51.100.10']" in screen
    assert "backup site readiness: 100 %" in screen
    os.write(master, b"y\n")
    screen += read_until(master, "run memory-drill-failover")
    screen += read_until(master, "FailedOver")
    assert proc.wait(timeout=60) == 0
    os.close(master)
    for step in ("notify-incident", "redirect-traffic", "dns-cutover", "link-test"):
        assert f"[ok  ] {step}" in screen
    assert "target    1h met" in screen
    assert re.search(r"^run memory-drill-failover\S*: FailedOver", screen, re.M), screen


def test_declining_or_no_terminal_changes_nothing(tmp_path: Path) -> None:
    plan = file_plan(tmp_path)
    res = cli("failover", str(plan), "--reason", "x", journal=tmp_path / "j.db")
    assert res.returncode == 2 and "pass --yes" in res.stderr
    assert not (tmp_path / "world.json").exists() or "weights" not in (
        tmp_path / "world.json").read_text()


def test_dry_run_leaves_every_backend_untouched(tmp_path: Path) -> None:
    plan = file_plan(tmp_path)
    world = tmp_path / "world.json"
    res = cli("failover", str(plan), "--reason", "x", "--dry-run", "-o", "json",
              journal=tmp_path / "j.db")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["dryRun"] is True
    changes = {s["name"]: s["change"] for s in out["steps"]}
    assert changes["redirect-traffic"].startswith("weights {'dc-a': 100")
    state = json.loads(world.read_text()) if world.exists() else {}
    assert "weights" not in state.get("traffic:edge", {})  # never written
    assert "sent" not in state.get("notifier:im", {})
    assert "sent" not in state.get("notifier:mail", {})
    zone = state.get("dns:zone", {}).get("records", [{"values": ["192.0.2.10"]}])
    assert zone[0]["values"] == ["192.0.2.10"]
    status = json.loads(cli("status", "-o", "json", journal=tmp_path / "j.db").stdout)
    assert all(p["run"] is None for p in status)


def test_readiness_fails_on_a_backup_older_than_the_rpo(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
    now = time.time()
    data["spec"]["backends"].append({
        "name": "vault", "role": "store", "kind": "memory", "options": {"backups": [
            {"id": "old", "dataset": "orders", "kind": "continuous", "takenAt": now - 7200,
             "verified": True},
            {"id": "new-but-unverified", "dataset": "orders", "kind": "continuous",
             "takenAt": now - 60, "verified": False}]}})
    data["spec"]["backends"].append({"name": "pg", "role": "restorer", "kind": "memory"})
    data["spec"]["steps"].append({"name": "restore-orders", "action": "restore",
                                  "backend": "pg", "target": "2h", "params": {
                                      "store": "vault", "dataset": "orders", "rpo": "1h",
                                      "into": {"path": "/srv/pg"}}})
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(data))
    res = cli("ready", str(plan), "-o", "json", journal=tmp_path / "j.db")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    [failed] = out["failed"]
    assert failed["name"] == "step restore-orders: backup within RPO"
    assert "(old) is 2h old; RPO budget is 1h" in failed["detail"]
    assert out["score"] < 100
    status = cli("status", "-o", "json", journal=tmp_path / "j.db")
    assert json.loads(status.stdout)[0]["readiness"]["failed"][0]["name"] == failed["name"]


def test_manual_mode_waits_then_approve_continues_the_run(tmp_path: Path) -> None:
    plan = file_plan(tmp_path)
    data = yaml.safe_load(plan.read_text())
    data["spec"]["mode"] = "manual"
    # one login requests and approves here: no four eyes (a second person: test_cli_approve)
    data["spec"]["approval"] = {"required": 1, "approvers": ["bob"], "distinct": False}
    plan.write_text(yaml.safe_dump(data))
    journal = tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "x", journal=journal)
    assert res.returncode == 4 and "waiting for approval: failoverctl approve" in res.stdout
    run_id = res.stdout.split("failoverctl approve ")[1].split()[0]
    denied = cli("approve", run_id, "--plan", str(plan), journal=journal)
    assert denied.returncode == 2 and f"{LOGIN} is not an approver" in denied.stderr
    data["spec"]["approval"]["approvers"] = ["bob", LOGIN]
    plan.write_text(yaml.safe_dump(data))
    ok = cli("approve", run_id, "--plan", str(plan), journal=journal)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "FailedOver" in ok.stdout
    audit = [(a["actor"], a["action"]) for a in Journal(journal).audit_trail(run_id=run_id)]
    assert (LOGIN, "start-failover") in audit and (LOGIN, "approve") in audit


def test_a_human_step_is_done_by_the_login_and_as_cannot_name_another(
        tmp_path: Path) -> None:
    plan = file_plan(tmp_path)
    data = yaml.safe_load(plan.read_text())
    data["spec"]["steps"].insert(0, {"name": "call-the-bank", "action": "manual",
                                     "params": {"instructions": "tell the bank we move"}})
    plan.write_text(yaml.safe_dump(data))
    journal = tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "x", journal=journal)
    assert res.returncode == 4, res.stdout + res.stderr
    [run] = Journal(journal).runs("memory-drill")
    done = ("done", run.id, "call-the-bank", "--plan", str(plan))

    forged = cli(*done, "--as", "oncall", journal=journal)
    assert forged.returncode == 2, forged.stdout + forged.stderr
    assert (f"--as oncall is refused: on a plan file you say call-the-bank is done as your "
            f"login, {LOGIN}: leave out --as, or ask oncall to say it is done") in forged.stderr
    assert Journal(journal).step(run.id, "call-the-bank").approved_by is None

    ok = cli(*done, journal=journal)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"by {LOGIN}" in ok.stdout
    j = Journal(journal)
    assert j.step(run.id, "call-the-bank").approved_by == LOGIN
    assert j.runs("memory-drill")[0].phase is Phase.FAILED_OVER
    audit = [(a["actor"], a["action"]) for a in j.audit_trail(run_id=run.id)]
    assert (LOGIN, "done-refused") in audit and ("oncall", "done") not in audit

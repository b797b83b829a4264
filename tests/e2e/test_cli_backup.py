"""`failoverctl backup` end to end: a real PostgreSQL 15 backed up with pg_basebackup into
a filesystem store, verified by a test restore, copied to a second (off-site) store;
progress on stderr, a summary on stdout, the run audited with who triggered it;
`--due` skips a set backed up recently; `ready` then knows the backups; `--due` also
test-restores the newest verified backup once the last passed test restore is older than
`testRestoreEvery`, which turns `ready` green again; a failing set exits 1; a bad
`--dataset` exits 2; `--cronjob` prints the schedule's manifests."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.drill.servers.base import free_port
from controller.drill.servers.postgres import PostgresServer
from controller.journal import Journal
from tests.e2e.test_cli import EXAMPLE, LOGIN, cli

ROWS = 500
KEYS = {"FAILOVER_E2E_KEY_A": base64.b64encode(os.urandom(32)).decode(),
        "FAILOVER_E2E_KEY_B": base64.b64encode(os.urandom(32)).decode()}


@pytest.fixture(scope="module")
def place() -> Iterator[Path]:
    """A directory the postgres OS user can reach (test restores run as it)."""
    base = Path(tempfile.mkdtemp(prefix="cli-backup-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def source(place: Path) -> Iterator[PostgresServer]:
    with PostgresServer(place / "source") as server:
        server.psql(f"CREATE TABLE users (id int PRIMARY KEY); INSERT INTO users SELECT "
                    f"generate_series(1, {ROWS})")
        yield server
        server.stop()


def _plan(place: Path, tmp_path: Path, *, port: int) -> Path:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())

    def store(name: str, env: str) -> dict[str, Any]:
        return {"path": str(place / tmp_path.name / name), "encryptionKey": {"fromEnv": env}}

    data["spec"]["backends"] += [
        {"name": "dc-a-backups", "role": "store", "kind": "filesystem",
         "options": store("dc-a", "FAILOVER_E2E_KEY_A")},
        {"name": "dc-b-backups", "role": "store", "kind": "filesystem",
         "options": store("dc-b", "FAILOVER_E2E_KEY_B")},
        {"name": "verify", "role": "verifier", "kind": "catalog", "options": {
            "store": {"kind": "filesystem", "options": store("dc-a", "FAILOVER_E2E_KEY_A")},
            "scratch": str(place), "validation": [
                {"name": "users", "sql": "SELECT count(*) FROM users", "expect": str(ROWS)}]}}]
    data["spec"]["backups"] = [{
        "dataset": "users", "kind": "daily", "every": "24h", "store": "dc-a-backups",
        "offsite": "dc-b-backups", "verifier": "verify", "retention": {"keep": 3},
        "source": {"basebackup": {"host": str(place / "source" / "sock"), "port": port}}}]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_backup_takes_verifies_copies_and_ready_knows_it(
        source: PostgresServer, place: Path, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    plan = _plan(place, tmp_path, port=source.port)

    res = cli("backup", str(plan), journal=journal, env=KEYS, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    for phase in ("preflight", "take", "verify", "offsite", "prune"):
        assert f"users: {phase}: started" in res.stderr
    [line] = res.stdout.splitlines()
    assert line.startswith("[ok]   users: ") and "_users_daily verified (passed: " in line
    assert "test-restore" in line and "off-site file://" in line and "0 pruned" in line
    backup_id = line.split()[2]
    assert (place / tmp_path.name / "dc-b" / backup_id / f"{backup_id}.bak").is_file()
    trail = Journal(journal).audit_trail(plan="memory-drill")
    assert [a["action"] for a in trail if a["actor"] == LOGIN] == [
        "backup-start", "backup", "verify", "backup-offsite", "verify", "backup-done"]

    due = cli("backup", str(plan), "--due", "-o", "json", journal=journal, env=KEYS)
    assert due.returncode == 0, due.stdout + due.stderr
    out = json.loads(due.stdout)
    assert out["results"] == [] and "younger than every 24h" in out["skipped"]["users"]

    ready = cli("ready", str(plan), "-o", "json", journal=journal, env=KEYS)
    checks = {c["name"]: c for c in json.loads(ready.stdout)["checks"]}
    for name in ("backup within RPO", "off-site copy within RPO", "test restore"):
        assert checks[f"backups users: {name}"]["ok"], checks


def test_due_test_restores_the_newest_verified_backup_when_its_last_test_restore_is_old(
        source: PostgresServer, place: Path, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    plan = _plan(place, tmp_path, port=source.port)
    data = yaml.safe_load(plan.read_text())
    data["spec"]["backups"][0]["testRestoreEvery"] = "1h"
    plan.write_text(yaml.safe_dump(data))
    res = cli("backup", str(plan), journal=journal, env=KEYS, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    backup_id = res.stdout.split()[2]
    entry_file = place / tmp_path.name / "dc-a" / backup_id / "catalog.json"
    # its verification's test restore is made 2h old, as time would
    entry = json.loads(entry_file.read_text())
    entry["verifications"][-1]["at"] -= 2 * 3600
    entry_file.write_text(json.dumps(entry))

    def test_restore_ready() -> dict[str, Any]:
        ready = cli("ready", str(plan), "-o", "json", journal=journal, env=KEYS)
        checks = {c["name"]: c for c in json.loads(ready.stdout)["checks"]}
        result: dict[str, Any] = checks["backups users: test restore"]
        return result

    assert not test_restore_ready()["ok"]
    started = time.time()
    due = cli("backup", str(plan), "--due", "-o", "json", journal=journal,
              env=KEYS, timeout=300)
    assert due.returncode == 0, due.stdout + due.stderr
    out = json.loads(due.stdout)
    assert out["results"] == [] and "younger than every 24h" in out["skipped"]["users"]
    [tested] = out["testRestores"]
    assert tested["backup"] == backup_id and tested["ok"] is True, tested
    assert tested["due"].startswith("users: the last passed test restore is 2h") \
        and tested["due"].endswith("old (every 1h)")
    assert "test-restore" in tested["summary"]
    last = json.loads(entry_file.read_text())["verifications"][-1]
    assert last["by"] == LOGIN and last["passed"] is True and last["at"] >= started
    [check] = [c for c in last["checks"] if c["name"] == "test-restore"]
    assert check["passed"] and check["validation"][0]["value"] == str(ROWS)
    assert test_restore_ready()["ok"]
    assert [a["action"] for a in Journal(journal).audit_trail(plan="memory-drill")
            if a["actor"] == LOGIN and a["at"] >= started] == [
        "test-restore-start", "verify", "test-restore-done"]

    again = cli("backup", str(plan), "--due", "-o", "json", journal=journal, env=KEYS)
    assert again.returncode == 0 and json.loads(again.stdout)["testRestores"] == []


def test_a_failing_set_exits_1_and_bad_input_exits_2(place: Path, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    plan = _plan(place, tmp_path, port=free_port())  # nothing listens there
    res = cli("backup", str(plan), journal=journal, env=KEYS)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith("[FAIL] users: no backup: take failed: pg_basebackup of "
                                 "users failed")
    assert "users: take: FAILED: " in res.stderr
    assert [a["action"] for a in Journal(journal).audit_trail(plan="memory-drill")] == [
        "backup-start", "backup-failed"]

    bad = cli("backup", str(plan), "--dataset", "orders", journal=journal, env=KEYS)
    assert bad.returncode == 2
    assert "--dataset orders: not in spec.backups (have: users)" in bad.stderr


def test_cronjob_prints_the_schedule_for_the_cluster(place: Path, tmp_path: Path) -> None:
    plan = _plan(place, tmp_path, port=free_port())
    res = cli("backup", str(plan), "--cronjob", "--namespace", "ops", "--image", "img:2",
              journal=tmp_path / "j.db")
    assert res.returncode == 0, res.stderr
    config_map, cron = yaml.safe_load_all(res.stdout)
    assert yaml.safe_load(config_map["data"]["plan.yaml"])["spec"]["backups"][0][
        "dataset"] == "users"
    assert cron["kind"] == "CronJob" and cron["metadata"]["namespace"] == "ops"
    [container] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "img:2" and "--due" in container["args"]

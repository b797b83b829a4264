"""The backup schedule and what readiness knows of the backups: a set is due once its
newest verified backup is `every` old; a test restore of the newest verified backup is
due once the last passed one is `testRestoreEvery` old, and a verifier that runs none
fails it; readiness fails on a backup or off-site copy older than the RPO budget, a
missing off-site copy, a stale test restore; the CronJob runs `backup --due` on the
plan."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest

from controller import readiness
from controller.backends import Backends
from controller.backups import Verifier
from controller.backups.filesystem import FilesystemBackupStore, FilesystemStoreOptions
from controller.backups.job import run_test_restore
from controller.backups.schedule import cronjob, due, due_test_restore, last_test_restore
from controller.model import Backup, Evidence
from controller.plan import BackupSet, FailoverPlan, parse_plan
from controller.secrets import Secrets
from tests.unit.test_plan_backups import daily, plan_with

HOUR, DAY = 3600.0, 86400.0
NOW = 1_800_000_000.0
SET = BackupSet.model_validate(daily(every="12h"))


def b(age_hours: float, verified: bool | None = True, test_restore_at: float | None = None
      ) -> Backup:
    checks = [{"name": "test-restore", "passed": True}] if test_restore_at else []
    meta = {"lastVerification": {"at": test_restore_at or NOW, "checks": checks}}
    return Backup(id=f"b{age_hours!r}", dataset="users", kind="daily",
                  taken_at=NOW - age_hours * HOUR, location="mem:", verified=verified,
                  meta=meta if verified is not None else {})


def test_due_when_nothing_is_verified_or_the_newest_is_every_old() -> None:
    assert due(SET, [], NOW) == "users: no verified backup yet"
    assert due(SET, [b(1, False), b(2, None)], NOW) == "users: no verified backup yet"
    assert due(SET, [b(11.9)], NOW) is None
    # a newer failed backup does not make the schedule wait
    assert due(SET, [b(1, False), b(12)], NOW) == (
        "users: newest verified backup b12 is 12h old (every 12h)")


def test_last_test_restore_is_the_newest_passed_one() -> None:
    assert last_test_restore([b(1), b(2, False)]) is None
    assert last_test_restore([b(1), b(2, test_restore_at=NOW - 5), b(3, test_restore_at=NOW - 9)]
                             ) == NOW - 5


def test_a_test_restore_of_the_newest_verified_backup_is_due_every_test_restore_every(
        ) -> None:
    weekly = BackupSet.model_validate(daily(testRestoreEvery="7d"))
    assert due_test_restore(weekly, [b(1, False), b(2, None)], NOW) is None  # none to test
    assert due_test_restore(weekly, [b(1), b(30)], NOW) == (
        b(1), "users: no test restore passed yet (every 168h)")
    fresh = [b(1), b(30, test_restore_at=NOW - 6 * DAY)]
    assert due_test_restore(weekly, fresh, NOW) is None
    stale = [b(1, False), b(5), b(30, test_restore_at=NOW - 7 * DAY - 300)]
    assert due_test_restore(weekly, stale, NOW) == (
        b(5), "users: the last passed test restore is 168h 5m old (every 168h)")


class _Verifier(Verifier):
    """Answers what a verifier with the given checks would (the real one: e2e)."""

    def __init__(self, passed: bool, checks: list[str]):
        self.passed, self.checks = passed, checks

    def verify(self, *, backup: Backup, actor: str | None = None) -> Evidence:
        return {"passed": self.passed, "summary": "checksums failed: mismatch" if not
                self.passed else "passed: " + ", ".join(self.checks),
                "checks": [{"name": c, "passed": self.passed} for c in self.checks]}

    def verify_unverified(self, *, dataset: str, actor: str | None = None
                          ) -> list[Evidence]:
        return []


@pytest.mark.parametrize(("passed", "checks", "error"), [
    (True, ["checksums", "test-restore"], ""),
    (True, ["checksums", "pgbackrest verify"], "verifier verify ran no test restore: set "
     "`testRestore: true` on it (readiness wants one every 168h)"),
    (False, ["checksums"], "checksums failed: mismatch")], ids=["passed", "none", "failed"])
def test_a_scheduled_test_restore_passes_only_when_the_test_restore_ran_and_passed(
        passed: bool, checks: list[str], error: str) -> None:
    done = run_test_restore(SET, b(5), "due", verifier=_Verifier(passed, checks),
                            actor="cron")
    assert (done.ok, done.error, done.backup) == (not error, error, "b5")


def test_the_cronjob_runs_backup_due_on_the_plan_it_carries() -> None:
    plan = parse_plan(plan_with([daily()]))
    config_map, cron = cronjob(plan, "the plan text", image="img:1", namespace="ns")
    assert config_map["data"] == {"plan.yaml": "the plan text"}
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "img:1"
    assert container["args"] == ["backup", "/etc/failover/plan.yaml", "--due"]
    assert {"name": "plan", "configMap": {"name": config_map["metadata"]["name"]}} in \
        pod["volumes"]


# --- readiness, on real filesystem stores -------------------------------------------------

@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("BACKUP_KEY", base64.b64encode(os.urandom(32)).decode())
    src = tmp_path / "data"
    src.mkdir()
    (src / "PG_VERSION").write_text("15\n")
    return {"src": src, "root": str(tmp_path)}


def _plan(stores: dict[str, Any], **extra: Any) -> FailoverPlan:
    return parse_plan(plan_with([daily(**extra)], root=stores["root"]))


def _store(path: str) -> FilesystemBackupStore:
    return FilesystemBackupStore(FilesystemStoreOptions.model_validate(
        {"path": path, "encryptionKey": {"fromEnv": "BACKUP_KEY"}}), secrets=Secrets())


def _put(stores: dict[str, Any], place: str, *, age: float, tested_age: float | None = None
         ) -> None:
    store = _store(f"{stores['root']}/{place}")
    backup = store.add_directory(stores["src"], dataset="users", kind="daily",
                                 taken_at=time.time() - age, actor="alice")
    checks = [] if tested_age is None else [{"name": "test-restore", "passed": True}]
    store.record_verification(backup.id, {
        "passed": True, "at": time.time() - (tested_age or 0), "durationS": 0.0,
        "summary": "passed", "checks": checks}, actor="verifier")


def _backup_checks(plan: FailoverPlan) -> dict[str, readiness.Check]:
    return {c.name: c for c in readiness.checks(plan, Backends(plan))
            if c.name.startswith("backups ")}


def test_readiness_passes_with_fresh_backups_copies_and_test_restore(
        stores: dict[str, Any]) -> None:
    _put(stores, "dc-a", age=HOUR, tested_age=HOUR)
    _put(stores, "dc-b", age=HOUR)
    found = _backup_checks(_plan(stores))
    assert sorted(found) == ["backups users: backup within RPO",
                             "backups users: off-site copy within RPO",
                             "backups users: test restore"]
    assert all(c.ok for c in found.values()), found


def test_readiness_fails_without_an_offsite_copy(stores: dict[str, Any]) -> None:
    _put(stores, "dc-a", age=HOUR, tested_age=HOUR)
    check = _backup_checks(_plan(stores))["backups users: off-site copy within RPO"]
    assert not check.ok
    assert "no verified off-site copy of users in store dc-b-backups" in check.detail


def test_readiness_fails_on_a_backup_older_than_the_rpo_budget(
        stores: dict[str, Any]) -> None:
    _put(stores, "dc-a", age=27 * HOUR, tested_age=HOUR)
    _put(stores, "dc-b", age=27 * HOUR)
    found = _backup_checks(_plan(stores))
    for name in ("backup within RPO", "off-site copy within RPO"):
        check = found[f"backups users: {name}"]
        assert not check.ok and "27h old, over the RPO budget of 26h" in check.detail


def test_readiness_fails_on_a_stale_or_missing_test_restore(stores: dict[str, Any]) -> None:
    _put(stores, "dc-a", age=HOUR)
    _put(stores, "dc-b", age=HOUR)
    check = _backup_checks(_plan(stores))["backups users: test restore"]
    assert not check.ok and "no test restore of users ever passed" in check.detail
    _put(stores, "dc-a", age=2 * HOUR, tested_age=8 * DAY)
    check = _backup_checks(_plan(stores, testRestoreEvery="7d"))["backups users: test restore"]
    assert not check.ok and "longer than testRestoreEvery 168h" in check.detail

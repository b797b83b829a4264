"""`dns-prepare`, `verify`, `backup` and `drill` on a plan file act as the operating-system login,
like `failover`, `failback`, `approve` and `done`: nothing proves another name given with
`--as`, so it is refused (exit 2), the refusal audited, and nothing is done."""

from __future__ import annotations

from pathlib import Path

from controller.journal import Journal
from tests.e2e.test_cli import LOGIN, cli, file_plan
from tests.e2e.test_cli_backup import _plan as backup_plan


def test_dns_prepare_verify_backup_and_drill_act_as_the_login_and_refuse_another_name(
        tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    plain, backups = file_plan(tmp_path), backup_plan(tmp_path, tmp_path, port=1)
    for argv, does, refused in (
            (("dns-prepare", str(plain), "--ttl", "60"), "lower the TTLs",
             "dns-prepare-refused"),
            (("verify", str(backups), "--dataset", "users"), "verify backups",
             "verify-refused"),
            (("backup", str(backups)), "take backups", "backup-refused"),
            (("drill", str(plain), "--out", str(tmp_path / "drill")), "run a drill",
             "drill-refused")):
        res = cli(*argv, "--as", "alice", journal=journal)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert (f"--as alice is refused: on a plan file you {does} as your login, {LOGIN}: "
                "leave out --as, or ask alice to run it") in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        j = Journal(journal)
        try:
            [last] = j.audit_trail(plan="memory-drill")[-1:]
        finally:
            j.close()
        assert (last["actor"], last["action"]) == (LOGIN, refused)
        assert "--as alice is refused" in last["detail"]

    j = Journal(journal)  # nothing else happened: no TTL lowered, no backup started
    try:
        assert [a["action"] for a in j.audit_trail(plan="memory-drill")] == [
            "dns-prepare-refused", "verify-refused", "backup-refused", "drill-refused"]
    finally:
        j.close()

    same = cli("dns-prepare", str(plain), "--ttl", "60", "--as", LOGIN, "-o", "json",
               journal=journal)  # repeating the login is no claim: it runs
    assert same.returncode == 0, same.stdout + same.stderr
    j = Journal(journal)
    try:
        assert [(a["actor"], a["action"]) for a in j.audit_trail(plan="memory-drill")][4] \
            == (LOGIN, "dns-prepare")
    finally:
        j.close()


def test_a_plan_file_drill_names_the_login_in_the_audit(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    res = cli("drill", str(file_plan(tmp_path)), "--out", str(tmp_path / "drill"),
              journal=journal)
    assert res.returncode == 0, res.stdout + res.stderr
    j = Journal(journal)
    try:
        actors = {a["actor"] for a in j.audit_trail(plan="memory-drill")}
    finally:
        j.close()
    assert actors == {LOGIN, "controller"}, actors  # the person, and the loop's own acts

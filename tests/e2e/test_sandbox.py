"""The sandbox drill as a user runs it: `failoverctl drill SCENARIO` against real servers.

Each test runs the CLI in a subprocess with its own journal and output directory, then
reads what it wrote: the verdict (checked against its JSON Schema), the reports, and
`sandbox.json`, whose recorded PIDs and ports must all be gone after the drill, whether
it passed, failed its verdict, broke midway or was stopped by SIGTERM. Nothing here
measures time: the drill's own verdict says whether each step met its target.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "manifests/drills/verdict.schema.json").read_text())


def drill(tmp_path: Path, scenario: str, *extra: str,
          timeout: float = 280) -> subprocess.CompletedProcess[str]:
    """Run a drill; one that outlives `timeout` gets SIGTERM (it tears its sandbox down
    first: a SIGKILL would leave the sandbox's servers running) and fails the test."""
    argv = [sys.executable, "-m", "controller", "--journal", str(tmp_path / "journal.db"),
            "drill", scenario, "--out", str(tmp_path / "out"), *extra]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=120)
            raise AssertionError(f"drill {scenario} still running after {timeout:g} s; "
                                 f"stopped: {out[-3000:]}{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def verdict_of(out: Path) -> dict[str, Any]:
    verdict: dict[str, Any] = json.loads((out / "verdict.json").read_text())
    jsonschema.validate(verdict, SCHEMA)
    return verdict


def checks(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in verdict["checks"]}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(") ", 1)[1].startswith("Z"))


def _naming(directory: str, *, but: tuple[int, ...] = ()) -> list[str]:
    """Command lines of live processes that name `directory` (except PIDs `but`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in but:
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(f"{directory}/" in arg + "/" for arg in args):
                found.append(" ".join(args))
    return found


def assert_nothing_left(out: Path, *, others: tuple[int, ...] = ()) -> dict[str, Any]:
    """Every PID the sandbox recorded is gone, every port refuses, no process names its
    directory (but `others`, which the sandbox did not start); and the sandbox's own
    teardown report agrees."""
    manifest: dict[str, Any] = json.loads((out / "sandbox.json").read_text())
    teardown = manifest["teardown"]
    pids = set(manifest["pids"]) | set(teardown["stoppedPids"])
    assert len(pids) >= 8, manifest  # haproxy, 2 apps, 3 named, postgres, sshd
    assert [p for p in pids if _alive(p)] == []
    for port in manifest["tcpPorts"]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"
    for port in manifest["udpPorts"]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", port))  # raises if something still holds it
    assert _naming(manifest["dir"], but=others) == []
    assert teardown["clean"] is True, teardown
    assert sorted(o["pid"] for o in teardown["leftAlone"]) == sorted(others)
    return manifest


def assert_promoted_and_every_incident_order_home(verdict: dict[str, Any], out: Path) -> None:
    """dc-a crashed: fenced over SSH, dc-b promoted on a new timeline with nothing lost;
    200 orders written at dc-b; the failback brought the database home first (rewound or
    base-backed up, switched over, dc-b streaming from dc-a), then traffic and DNS; the
    orders are at dc-a, the LSNs reported."""
    [promote] = [s for s in verdict["failover"]["steps"] if s["action"] == "promote"]
    ev = promote["evidence"]
    assert ev["fence"]["how"] == "ssh-stop" and ev["timeline"] == 2 and ev["rpoBytes"] == 0
    said = checks(verdict)
    wrote = said["the app writes 200 orders at dc-b during the incident"]
    assert wrote["ok"] and "200 orders (ids 20001-20200" in wrote["detail"]
    back = verdict["failback"]["steps"]
    assert [s["action"] for s in back] == ["db-failback", "revert", "revert"]
    assert back[0]["status"] == "succeeded"
    assert back[0]["finishedAt"] <= min(s["startedAt"] for s in back[1:])
    home = said["every order written at dc-b during the incident is home at dc-a"]
    assert home["ok"], home["detail"]
    assert "dc-a primary at LSN" in home["detail"] and "holds 200 of them" in home["detail"]
    assert "dc-b standby (streaming from port" in home["detail"]
    report = (out / "report.md").read_text()
    assert home["detail"] in report.replace("\\|", "|") and ev["lsnReached"] in report


def secret_values(sandbox: Path) -> list[str]:
    values = [p.read_text().strip() for p in (sandbox / "secrets").iterdir()]
    key = (sandbox / "dns" / "tsig.key").read_text()
    values.append(key.split('secret "', 1)[1].split('"', 1)[0])
    urls = [v for v in values if v.startswith("http")]
    values += [u.split("/", 3)[3] for u in urls] + [u.rsplit("/", 1)[1] for u in urls]
    return [v for v in values if len(v) >= 8 and not v.startswith(("-----", "[127"))] + [
        line for p in (sandbox / "secrets").glob("ssh-key") for line in
        p.read_text().splitlines()[1:-1]]


@pytest.fixture
def kept(tmp_path: Path) -> Iterator[Path]:
    """A directory the sandbox keeps its files in (secrets included, for the leak check);
    under /tmp, since the postgres OS user cannot enter pytest's 0700 tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-kept-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_default_drill_runs_end_to_end_and_writes_the_reports(tmp_path: Path,
                                                              kept: Path) -> None:
    sandbox = kept
    # someone tails a log in the sandbox meanwhile: the teardown must not stop them
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                              str(sandbox / "edge" / "app-primary.log")])
    try:
        res = drill(tmp_path, "switch-to-backup-dc", "--sandbox-dir", str(sandbox))
        assert other.poll() is None, "the sandbox stopped a process it did not start"
    finally:
        other.kill()
        other.wait(10)
    out = tmp_path / "out"
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert f"report: {out / 'report.html'}" in res.stdout
    assert "named ns3" in res.stdout and "postgresql (primary)" in res.stdout  # what runs where

    verdict = verdict_of(out)
    assert verdict["passed"] and all(c["ok"] for c in verdict["checks"])
    failover = verdict["failover"]
    assert [s["name"] for s in failover["steps"]] == [
        "notify-incident", "promote-db", "redirect-traffic", "dns-cutover"]
    assert {s["status"] for s in failover["steps"]} == {"succeeded"}
    assert all(s["met"] for s in failover["steps"])
    timeline = verdict["timeline"]
    assert timeline["injectedAt"] <= timeline["detectedAt"] <= timeline["trippedAt"]
    ends = [s["finishedAt"] for s in failover["steps"]]
    assert ends == sorted(ends) and failover["steps"][0]["startedAt"] >= timeline["trippedAt"]
    traffic, dns_step = (failover["steps"][i]["evidence"] for i in (2, 3))
    assert traffic["after"] == {"dc-a": 0, "dc-b": 100}
    assert traffic["observed"]["share"] == {"dc-b": 100.0}
    assert [s["name"] for s in dns_step["servers"]] == ["ns1", "ns2", "ns3"]
    # never two primaries: the repair restarts dc-a's app, not its database
    assert "its PostgreSQL stays down: dc-b was promoted" in res.stdout
    assert_promoted_and_every_incident_order_home(verdict, out)
    found = checks(verdict)
    for name in ("traffic served by dc-b through HAProxy",
                 "DNS answers dc-b on every authoritative server", "notices sent at level 1",
                 "traffic served by dc-a through HAProxy",
                 "DNS answers dc-a on every authoritative server",
                 "RTO within plan", "RPO within plan", "teardown left nothing behind"):
        assert found[name]["ok"], found[name]
    assert verdict["objectives"]["rto"]["achievedSeconds"] > 0
    assert verdict["objectives"]["rpo"]["step"] == "promote-db"

    suites = ET.fromstring((out / "drill.junit.xml").read_text())
    cases = [c.get("name") for c in suites.iter("testcase")]
    assert {"promote-db", "failback-promote-db", "revert-dns-cutover",
            "every order written at dc-b during the incident is home at dc-a"} <= set(cases)
    assert suites.get("failures") == "0"
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 2 and "RTO" in html and "RPO" in html
    for name in ("failover.svg", "failback.svg"):
        ET.fromstring((out / name).read_text())
    markdown = (out / "report.md").read_text()
    assert "![Failover timeline" in markdown and "ns3 (127.0.0.1:" in markdown

    texts = res.stdout + res.stderr + "".join(
        p.read_text(errors="replace") for p in out.iterdir() if p.is_file() and p.suffix
        != ".db")
    leaked = [v[:6] + "…" for v in secret_values(sandbox) if v in texts]
    assert leaked == []
    assert_nothing_left(out, others=(other.pid,))
    assert f"left running (not started by the sandbox): pid {other.pid}" in res.stdout


def test_corrupted_newest_backup_falls_back_to_an_older_verified_one(tmp_path: Path) -> None:
    res = drill(tmp_path, "corrupted-backup")
    out = tmp_path / "out"
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    verdict = verdict_of(out)
    newest, older = (b["id"] for b in verdict["sandbox"]["backups"])
    restore = next(s for s in verdict["failover"]["steps"] if s["name"] == "restore-db")
    assert restore["status"] == "succeeded"
    assert restore["evidence"]["chosen"] == older
    assert f"skipped newer {newest} failed verification" in restore["evidence"]["why"]
    assert "checksum mismatch" in restore["evidence"]["why"]
    assert checks(verdict)["restored data passes validation, from an older verified "
                           "backup"]["ok"]
    assert f"skipped newer {newest} failed verification" in (out / "report.md").read_text()
    assert_nothing_left(out)


def test_impossible_target_exits_non_zero_naming_the_breached_step(tmp_path: Path) -> None:
    """Scenario `restore-from-backup` (the default drill's fallback) with restore-db's
    target tightened to 100 ms: the restore itself works and is validated, the failback
    reverts DNS and traffic, and only the breached target fails the drill."""
    res = drill(tmp_path, "impossible-target")
    out = tmp_path / "out"
    assert res.returncode == 1, res.stdout[-4000:] + res.stderr[-4000:]
    assert "FAIL time targets met: missed: restore-db (done" in res.stdout
    assert "drill impossible-target FAILED: time targets met" in res.stdout, res.stdout[-3000:]
    verdict = verdict_of(out)
    assert not verdict["passed"]
    failed = [c for c in verdict["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == ["time targets met"]
    steps = verdict["failover"]["steps"]
    assert [s["name"] for s in steps] == [
        "notify-incident", "redirect-traffic", "dns-cutover", "restore-db", "link-test"]
    assert {s["status"] for s in steps} == {"succeeded"}
    restore = steps[3]["evidence"]
    assert all(v["passed"] for v in restore["validation"]) and restore["rpoMet"] is True
    assert verdict["objectives"]["rpo"]["backup"] == restore["backup"]
    assert checks(verdict)["restored data passes validation"]["ok"]
    assert [s["name"] for s in verdict["failback"]["steps"]] == [
        "revert-dns-cutover", "revert-redirect-traffic"]
    assert "restore-db" in failed[0]["detail"] and "target 0.10 s" in failed[0]["detail"]
    cases = {c.get("name"): c for c in ET.fromstring(
        (out / "drill.junit.xml").read_text()).iter("testcase")}
    assert cases["restore-db"].find("failure") is not None
    assert cases["dns-cutover"].find("failure") is None
    assert_nothing_left(out)


def _step_status(journal: Path, step: str) -> str | None:
    if not journal.exists():
        return None
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT status FROM steps WHERE name=?", (step,)).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None
    return str(row[0]) if row else None


def test_sigterm_during_the_restore_tears_everything_down(tmp_path: Path) -> None:
    out, journal = tmp_path / "out", tmp_path / "journal.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(journal),
         "drill", "restore-from-backup", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        while _step_status(journal, "restore-db") != "running":  # the SSH restore is on
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        manifest = json.loads((out / "sandbox.json").read_text())
        assert manifest["teardown"] == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-3000:] + stderr[-3000:]
    assert "interrupted by SIGTERM; the sandbox was torn down" in stderr
    assert_nothing_left(out)
    assert not Path(manifest["dir"]).exists()
    assert _step_status(journal, "restore-db") == "failed"  # recorded, not retried
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        [(phase, outcome)] = db.execute("SELECT phase, outcome FROM runs").fetchall()
    assert phase == "Failed" and "interrupted by SIGTERM" in outcome  # no run left open


def test_a_drill_that_breaks_midway_still_tears_everything_down(tmp_path: Path) -> None:
    scenario = tmp_path / "broken.yaml"
    scenario.write_text((ROOT / "manifests/drills/restore-from-backup.yaml").read_text()
                        .replace("name: restore-from-backup", "name: broken-midway")
                        .replace("- {kind: kill-app, site: primary}",
                                 "- {kind: kill-app, site: primary}\n"
                                 "    - {kind: stop-dns-server, server: ns9}"))
    res = drill(tmp_path, str(scenario))
    out = tmp_path / "out"
    assert res.returncode == 1, res.stdout[-4000:] + res.stderr[-4000:]
    assert "broke: KeyError" in res.stderr and "ns9" in res.stderr
    assert "PASS baseline healthy" in res.stdout  # it broke midway, not at the start
    manifest = assert_nothing_left(out)
    assert not Path(manifest["dir"]).exists()


def test_a_refused_sandbox_directory_and_whoever_uses_it_are_left_alone(tmp_path: Path) -> None:
    """`--sandbox-dir` with files in it is refused; the refusal stops nothing and removes
    nothing: a process that merely names the directory is not the sandbox's to stop."""
    used = Path(tempfile.mkdtemp(prefix="sandbox-in-use-"))
    (used / "notes.txt").write_text("someone else's\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                              str(used / "notes.txt")])
    try:
        res = drill(tmp_path, "switch-to-backup-dc", "--sandbox-dir", str(used), timeout=120)
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
        assert f"sandbox directory {used} is not empty" in res.stderr
        assert "give a new or empty directory" in res.stderr
        assert other.poll() is None, "the sandbox stopped a process it did not start"
        assert [p.name for p in used.iterdir()] == ["notes.txt"]
    finally:
        other.kill()
        other.wait(10)
        shutil.rmtree(used, ignore_errors=True)


def test_the_verdict_schema_knows_every_step_kind() -> None:
    """A drill's verdict validates whatever kinds its plan uses (promote, db-failback...)."""
    from controller.registry import step_actions

    actions = SCHEMA["$defs"]["step"]["properties"]["action"]["enum"]
    assert sorted(actions) == step_actions()


def test_the_sandbox_stonith_hook_stops_dc_a_and_its_dry_run_changes_nothing() -> None:
    """The promote plan's fence of last resort (when SSH cannot reach dc-a's host): its
    dry run (readiness) leaves dc-a running; run, it stops dc-a's postmaster by PID, and
    run again finds it stopped; dc-b's standby is untouched. Teardown stops what runs."""
    from controller.drill.databases import Databases

    base = Path(tempfile.mkdtemp(prefix="stonith-"))  # the postgres OS user reaches /tmp
    base.chmod(0o755)
    dbs = Databases(base, rows=10, standby=True)
    try:
        dbs.start()
        assert dbs.primary is not None and dbs.standby is not None
        pid = dbs.primary.pid
        dry = subprocess.run([*dbs.stonith, "--dry-run"], capture_output=True, text=True)
        assert dry.returncode == 0 and dbs.primary.psql("SELECT count(*) FROM orders") == "10"
        done = subprocess.run(dbs.stonith, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and f"postmaster {pid} stopped" in done.stdout
        assert pid is not None and not _alive(pid)
        again = subprocess.run(dbs.stonith, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.strip().endswith(": stopped")
        assert dbs.standby.psql("SELECT pg_is_in_recovery(), count(*) FROM orders") == "t|10"
    finally:
        stopped = dbs.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert stopped and not any(_alive(p) for p in stopped)

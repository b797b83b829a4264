"""Every shipped drill scenario: valid on paper, and passing against the real sandbox.

The first tests need no server: each scenario loads, names a template, and renders into
a valid plan (the sandbox's variables faked). The parametrized test runs each scenario
not already covered by `test_sandbox.py` through `failoverctl drill` and checks that its
verdict passed for the reason the scenario is about (the level, the step that must fail
and why), and that nothing is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.drill.scenario import (
    DEFAULT,
    SCENARIOS,
    ScenarioError,
    build_plan,
    find,
    load_scenario,
    merge,
)
from controller.plan import PlanError
from tests.e2e.test_sandbox import (
    assert_nothing_left,
    assert_promoted_and_every_incident_order_home,
    checks,
    verdict_of,
)

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(SCENARIOS.glob("*.yaml"))
# run by test_sandbox.py; restore-from-backup there as impossible-target (the same
# scenario with one target tightened: everything but that target passes) and up to its
# restore by the SIGTERM test
COVERED_ELSEWHERE = {"switch-to-backup-dc", "restore-from-backup", "corrupted-backup",
                     "impossible-target"}


def fake_variables() -> dict[str, Any]:
    """What `Sandbox.variables()` offers, with made-up values (no server started)."""
    store = {"bucket": "b", "prefix": "dc-a/orders", "endpointUrl": "http://127.0.0.1:9",
             "accessKeyId": {"fromFile": "/s/a"}, "secretAccessKey": {"fromFile": "/s/b"},
             "encryptionKey": {"fromFile": "/s/k"}}
    offsite = {**store, "bucket": "o", "prefix": "dc-b/orders",
               "endpointUrl": "http://127.0.0.1:10", "encryptionKey": {"fromFile": "/s/o"}}
    return {
        "sandbox.dir": "/s", "edge.url": "http://127.0.0.1:8", "edge.socket": "/s/admin.sock",
        "edge.backend": "be_app", "edge.servers": {"dc-a": ["web1"], "dc-b": ["web2"]},
        "sites.primary": "dc-a", "sites.backup": "dc-b", "dns.zone": "example.test.",
        "dns.name": "www.example.test.", "dns.server": "127.0.0.1", "dns.port": 5353,
        "dns.keyName": "k", "dns.keyFile": "/s/tsig.key",
        "dns.nameservers": [{"address": "127.0.0.1", "port": 5353, "name": "ns1"}],
        "dns.primaryAddress": "192.0.2.10", "dns.backupAddress": "198.51.100.10",
        "db.primary.host": "/s/sock", "db.primary.port": 5432, "db.primary.data": "/s/a",
        "db.primary.sshPort": 2222, "db.pgBin": "/usr/lib/postgresql/15/bin", "db.rows": "9",
        "db.stonith": ["/s/dc-a-host/stonith"], "db.standby.host": "/s/sock-b",
        "db.standby.port": 5434, "db.standby.data": "/s/b",
        "backup.store": {"kind": "s3", "options": store}, "backup.storeOptions": store,
        "backup.offsiteStore": {"kind": "s3", "options": offsite},
        "backup.offsiteStoreOptions": offsite,
        "backup.dataset": "orders", "backup.scratch": "/s/scratch",
        "backup.validation": [{"name": "rows", "sql": "SELECT 1", "expect": "1"}],
        "restore.host": "127.0.0.1", "restore.sshPort": 22,
        "restore.ssh": {"user": "root", "privateKey": {"fromFile": "/s/key"},
                        "knownHosts": {"fromFile": "/s/known"}},
        "restore.path": "/s/data", "restore.socketDir": "/s/sock", "restore.port": 5433,
        "mail.host": "127.0.0.1", "mail.port": 25, "mail.caFile": "/s/ca.pem",
        "mail.username": "bot", "mail.password": {"fromFile": "/s/pw"},
        "im.url": {"fromFile": "/s/im"}, "sms.url": {"fromFile": "/s/sms"},
    }


def test_one_scenario_per_emergency_plan_case() -> None:
    names = {p.stem for p in FILES}
    assert {"api-outage-level-1", "api-outage-level-2", "api-outage-level-3", DEFAULT,
            "restore-from-backup", "promote-standby", "database-restore",
            "corrupted-backup", "impossible-target"} <= names
    assert find(DEFAULT) == SCENARIOS / f"{DEFAULT}.yaml"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_scenario_renders_into_a_valid_plan(path: Path) -> None:
    scenario, template = load_scenario(path)
    assert scenario.name == path.stem
    plan, data = build_plan(scenario, template, fake_variables())
    assert plan.name == scenario.name
    assert "${" not in json.dumps(data)
    steps = {s.name for s in plan.spec.steps}
    assert set(scenario.spec.expect.failed_steps) <= steps
    levels = {n.level for n in plan.spec.notifications}
    for want in (scenario.spec.expect.after_failover, scenario.spec.expect.after_failback):
        assert want.notices is None or want.notices.level in levels


def test_impossible_target_is_restore_from_backup_with_one_target_tightened() -> None:
    """What lets the sandbox tests run restore-from-backup only as impossible-target."""
    def rendered(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        scenario, template = load_scenario(SCENARIOS / f"{name}.yaml")
        _, data = build_plan(scenario, template, fake_variables(), name="drill")
        spec = scenario.spec.model_dump(exclude={"description", "overrides", "expect"})
        return data, spec

    plan, spec = rendered("restore-from-backup")
    tight, tight_spec = rendered("impossible-target")
    [restore] = [s for s in tight["spec"]["steps"] if s["name"] == "restore-db"]
    assert restore["target"] == "100ms"
    restore["target"] = "2h"
    assert (tight, tight_spec) == (plan, spec)


def test_bad_scenarios_and_templates_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: DrillScenario\nmetadata: {name: x}\nspec: {plan: nope, faults: "
                   "[{kind: unplug-everything}]}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert any(p.startswith("spec.faults.0.kind") for p in err.value.problems)
    bad.write_text("kind: DrillScenario\nmetadata: {name: x}\nspec: {plan: nope, faults: "
                   "[{kind: kill-app}]}\n")
    with pytest.raises(ScenarioError, match=r"spec\.plan: no template"):
        load_scenario(bad)
    scenario, template = load_scenario(SCENARIOS / f"{DEFAULT}.yaml")
    variables = fake_variables()
    del variables["edge.socket"]
    with pytest.raises(PlanError, match=r"unknown placeholder \$\{edge.socket\}"):
        build_plan(scenario, template, variables)
    text = (SCENARIOS / "promote-standby.yaml").read_text()
    bad.write_text(text.replace("sandbox: {standby: true}", "sandbox: {rows: 9}"))
    with pytest.raises(ScenarioError, match=r"set `sandbox: \{standby: true\}`"):
        load_scenario(bad)
    scenario, template = load_scenario(SCENARIOS / "promote-standby.yaml")
    variables = {k: v for k, v in fake_variables().items() if not k.startswith("db.standby")}
    with pytest.raises(PlanError, match=r"\$\{db.standby.host\}; a standby's are there "
                       r"with `sandbox: \{standby: true\}`"):
        build_plan(scenario, template, variables)
    with pytest.raises(PlanError, match="no item named 'nope'"):
        merge({"steps": [{"name": "a"}]}, {"steps": {"nope": {"target": "1s"}}})
    res = subprocess.run([sys.executable, "-m", "controller", "--journal",
                          str(tmp_path / "j.db"), "drill", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "invalid scenario" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("path", [p for p in FILES if p.stem not in COVERED_ELSEWHERE],
                         ids=lambda p: p.stem)
def test_scenario_passes_in_the_sandbox(path: Path, tmp_path: Path) -> None:
    scenario, _ = load_scenario(path)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "controller", "--journal", str(tmp_path / "journal.db"),
         "drill", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    verdict = verdict_of(out)
    assert verdict["passed"]
    expect = scenario.spec.expect
    assert verdict["failover"]["run"]["level"] == expect.level
    assert verdict["failover"]["run"]["phase"] == expect.phase
    for step, pattern in expect.failed_steps.items():
        assert checks(verdict)[f"step {step} fails as expected (/{pattern}/)"]["ok"]
    assert ("failback" in verdict) == (expect.failback and expect.phase == "FailedOver")
    if scenario.name == "swapped-payload":
        assert_swapped_payload_refused_naming_both(verdict)
    if scenario.name == "offsite-restore":
        assert_restored_from_the_offsite_copy(verdict)
    if scenario.name == "promote-standby":  # never two primaries: dc-a stays down
        assert "its PostgreSQL stays down: dc-b was promoted" in res.stdout
        assert_promoted_and_every_incident_order_home(verdict, out)
    assert_nothing_left(out)


def assert_swapped_payload_refused_naming_both(verdict: dict[str, Any]) -> None:
    """The newest backup's payload was the oldest's: refused, naming both; the middle one
    restored."""
    newest, middle, oldest = (b["id"] for b in verdict["sandbox"]["backups"])
    [step] = [s for s in verdict["failover"]["steps"] if s["action"] == "restore"]
    [failed] = step["evidence"]["fellBack"]
    assert failed["backup"] == newest and step["evidence"]["chosen"] == middle
    assert f"the payload stored for backup {newest} " in failed["why"]
    assert f"is the payload of backup {oldest} " in failed["why"]


def assert_restored_from_the_offsite_copy(verdict: dict[str, Any]) -> None:
    """dc-a's store was emptied: the newest backup came back from its off-site copy, in
    the off-site bucket, read back there before the drill, within the RPO budget."""
    newest = verdict["sandbox"]["backups"][0]["id"]
    copies = {c["id"]: c for c in verdict["sandbox"]["offsiteCopies"]}
    assert copies[newest]["verified"] is True
    [step] = [s for s in verdict["failover"]["steps"] if s["action"] == "restore"]
    ev = step["evidence"]
    assert ev["chosen"] == newest and "fellBack" not in ev
    assert ev["location"] == copies[newest]["location"]
    assert ev["location"].startswith("s3://dc-b-offsite/dc-b/orders/")
    assert "objects deleted from s3://dc-a-backups" in json.dumps(verdict)
    rpo = verdict["objectives"]["rpo"]
    assert rpo["met"] is True and rpo["targetSeconds"] == 600 and rpo["backup"] == newest


def test_the_ci_workflow_runs_shipped_scenarios_and_publishes_their_junit() -> None:
    import yaml

    workflow = yaml.safe_load((ROOT / "manifests/ci/drill.yml").read_text())
    assert "schedule" in workflow[True]  # YAML 1.1 reads the key `on` as True
    drill = workflow["jobs"]["drill"]
    names = set(drill["strategy"]["matrix"]["scenario"])
    assert names | {"impossible-target"} == {p.stem for p in FILES}
    text = (ROOT / "manifests/ci/drill.yml").read_text()
    assert "drill.junit.xml" in text and "upload-artifact" in text
    assert "scripts/setup" in text

"""The shipped alert rules (`manifests/monitoring/`) page when they must and only then.

`promtool check rules` accepts the rule file; the PrometheusRule is generated from it (run
this file to regenerate: `.venv/bin/python tests/unit/test_monitoring_rules.py`); and for
every alert `promtool test rules` runs series written here: one that fires it, with the
summary and description an on-call person reads, and one that must not (a blip shorter
than its `for:`, another phase, a controller restart). Commands the annotations tell a
person to type exist, and runbook links point at runbooks of this repository.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from controller.cli import main

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests/monitoring"
RULES = MONITORING / "failover.rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
HEADER = """\
# The alert rules of failover.rules.yaml for the Prometheus Operator, generated from it:
# after editing the rule file, run `.venv/bin/python tests/unit/test_monitoring_rules.py`
# (tests/unit/test_monitoring_rules.py fails while this file is stale). Add the labels your
# Prometheus's ruleSelector needs (kube-prometheus-stack: release: <its release name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: failover-controller
  namespace: failover-system
  labels: {app.kubernetes.io/name: failover-controller}
spec:
"""


def render_prometheus_rule() -> str:
    """The PrometheusRule: the rule file's `groups:` block under `spec:`, comments and all."""
    groups = RULES.read_text().split("\ngroups:\n", 1)[1]
    return HEADER + "  groups:\n" + textwrap.indent(groups, "  ")


def rules() -> dict[str, dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in loaded["groups"] for r in g["rules"] if "alert" in r}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: scripts/setup installs it (Debian package prometheus)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rule_file() -> None:
    res = promtool("check", "rules", str(RULES), cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_prometheus_rule_is_generated_from_the_rule_file() -> None:
    assert PROMETHEUS_RULE.read_text() == render_prometheus_rule(), (
        f"{PROMETHEUS_RULE.relative_to(ROOT)} is stale; regenerate it: "
        ".venv/bin/python tests/unit/test_monitoring_rules.py")
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize("alert", sorted(rules()))
def test_every_alert_tells_on_call_what_and_what_to_do(alert: str) -> None:
    rule = rules()[alert]
    assert rule["labels"]["severity"] in ("critical", "warning")
    notes = rule["annotations"]
    assert notes["summary"] and len(notes["description"]) > len(notes["summary"])
    if "runbook_url" in notes:
        assert (ROOT / notes["runbook_url"]).is_file(), notes["runbook_url"]
    for said in re.findall(r"`failoverctl ([^`]+)`", notes["description"]):
        name, *args = shlex.split(said)
        assert name in main.commands, f"{alert}: no command `failoverctl {name}`"
        known = {o for p in main.commands[name].params if isinstance(p, click.Option)
                 for o in p.opts}
        unknown = [a for a in args if a.startswith("-") and a not in known]
        assert not unknown, f"{alert}: `failoverctl {name}` has no option {unknown}"


@dataclass
class Group:
    """One `promtool test rules` test group: input series and, per evaluation time, the
    alerts expected firing as (labels, value as the annotations show it)."""

    series: dict[str, str]
    expect: dict[str, list[tuple[dict[str, str], str]]]
    interval: str = "1m"


@dataclass
class Case:
    groups: list[Group]
    evaluation_interval: str = "1m"


def s(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


C1 = {"instance": "c1:8080", "job": "failover"}
C2 = {"instance": "c2:8080", "job": "failover"}

CASES: dict[str, Case] = {
    # a run that starts fails over at once (no `for:`); another plan that only tripped,
    # and the run once it is done, are quiet
    "FailoverStarted": Case([Group(
        {s("failover_plan_phase", plan="shop", phase="FailingOver", **C1): "0 0 1 1 0",
         s("failover_incident_level", plan="shop", **C1): "0 0 2 2 2",
         s("failover_plan_phase", plan="blog", phase="FailingOver", **C1): "0x4",
         s("failover_plan_phase", plan="blog", phase="Tripped", **C1): "1x4",
         s("failover_incident_level", plan="blog", **C1): "1x4"},
        {"1m": [], "2m": [({"plan": "shop", **C1}, "2")], "4m": []})]),
    # waits one minute before paging; an approval given within it pages no one
    "FailoverAwaitingApproval": Case([Group(
        {s("failover_plan_phase", plan="shop", phase="AwaitingApproval", **C1): "1x5",
         s("failover_plan_phase", plan="blog", phase="AwaitingApproval", **C1): "0 1 0 0 0"},
        {"0m": [], "2m": [({"plan": "shop", "phase": "AwaitingApproval", **C1}, "1")]})]),
    "FailoverRunFailed": Case([Group(
        {s("failover_plan_phase", plan="shop", phase="Failed", **C1): "0 1 1",
         s("failover_plan_phase", plan="blog", phase="Failed", **C1): "0 0 0",
         s("failover_plan_phase", plan="blog", phase="FailedOver", **C1): "1 1 1"},
        {"0m": [], "1m": [({"plan": "shop", "phase": "Failed", **C1}, "1")]})]),
    # a miss pages for 30 min from the counter's first increase (metrics.declare starts it
    # at 0); a controller restart that resets another step's counter is no miss
    "FailoverStepTargetMissed": Case([Group(
        {s("failover_step_targets_missed_total", plan="shop", step="restore-db", **C1):
            "0 0 1x40",
         s("failover_step_targets_missed_total", plan="shop", step="dns", **C1): "1x5 0x35"},
        {"1m": [], "10m": [({"plan": "shop", "step": "restore-db", **C1}, "1")], "40m": []})]),
    # below 100 % for 10 min pages; 9 min below (one failing readiness check) does not
    "FailoverBackupSiteNotReady": Case([Group(
        {s("failover_backup_site_readiness_percent", plan="shop", **C1): "100 90x20",
         s("failover_backup_site_readiness_percent", plan="blog", **C1): "100 90x8 100x11"},
        {"10m": [], "11m": [({"plan": "shop", **C1}, "90")]})]),
    # c1 stops beating at 5 m: pages at 11 m (2 min stale, then 3 min); c2 pauses 3 min
    "ControllerNotReconciling": Case([Group(
        {s("failover_controller_last_reconcile_timestamp_seconds", **C1): "0+60x5 300x10",
         s("failover_controller_last_reconcile_timestamp_seconds", **C2):
             "0+60x5 300 300 300 540+60x6"},
        {"10m": [], "11m": [(C1, "6m 0s")]})]),
    # c1's probe loop falls behind from 5 m to 10 m (inconclusive probes): warns while
    # they are within the last 10 min; c2 has none
    "ControllerOverloaded": Case([Group(
        {s("failover_probe_inconclusive_total", plan="shop", service="web", **C1):
             "0x5 1+1x5 6x20",
         s("failover_probe_inconclusive_total", plan="shop", service="web", **C2): "0x30"},
        {"4m": [], "8m": [({"instance": "c1:8080"}, "")], "25m": []})]),
    # no controller scraped for 10 min pages; a scrape gap of 3 min does not
    "ControllerAbsent": Case([
        Group({s("failover_controller_last_reconcile_timestamp_seconds", **C1): "0+60x5"},
              {"15m": [], "25m": [({}, "1")]}),
        Group({s("failover_controller_last_reconcile_timestamp_seconds", **C1):
               "0+60x5 _x3 540+60x30"}, {"25m": []})]),
    # shop's newest verified backup (taken at 0) outgrows its 1 h budget at 61 m and pages
    # 30 min later; blog's backup is 9 min late, then a new one is verified: quiet
    "BackupOlderThanRPO": Case([Group(
        {s("failover_backup_newest_verified_timestamp_seconds", plan="shop",
           step="restore-db", dataset="orders", **C1): "0x100",
         s("failover_backup_rpo_budget_seconds", plan="shop", step="restore-db",
           dataset="orders", **C1): "3600x100",
         s("failover_backup_newest_verified_timestamp_seconds", plan="blog",
           step="restore-db", dataset="posts", **C1): "0x69 4200x30",
         s("failover_backup_rpo_budget_seconds", plan="blog", step="restore-db",
           dataset="posts", **C1): "3600x100"},
        {"90m": [], "91m": [({"plan": "shop", "step": "restore-db", "dataset": "orders",
                              **C1}, "1h 31m 0s")]})]),
    # shop's last passing drill ended at 0: past 365 days it pages (one evaluation a day
    # here: pending on day 366, firing on day 367); blog drilled again on day 300 (a failed
    # drill in between writes no last-passed time)
    "NoPassingDrill": Case([Group(
        {s("failover_drill_last_passed_timestamp_seconds", plan="shop", scenario="",
           job="drills"): "0x370",
         s("failover_drill_last_passed_timestamp_seconds", plan="blog", scenario="",
           job="drills"): "0x299 25920000x70"},
        {"366d": [], "367d": [({"plan": "shop"}, "367d 0h 0m 0s")]},
        interval="1d")], evaluation_interval="1d"),
}


def rendered(alert: str, labels: dict[str, str], value: str) -> dict[str, str]:
    """The annotations as promtool renders them for these labels and value: the rules use
    only `{{ $labels.NAME }}`, `{{ $value }}` and `{{ $value | humanizeDuration }}`."""
    out = {}
    for key, text in rules()[alert]["annotations"].items():
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        text = re.sub(r"\{\{ \$value( \| humanizeDuration)? \}\}", value, text)
        assert "{{" not in text, f"{alert}.{key}: a template this test cannot expect: {text}"
        out[key] = text
    return out


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    assert set(CASES) == set(rules())
    for name, case in CASES.items():
        evals = [alerts for g in case.groups for alerts in g.expect.values()]
        assert any(evals) and not all(evals), f"{name}: needs a firing and a quiet eval"


@pytest.mark.parametrize("alert", sorted(CASES))
def test_alert_fires_on_its_series_and_only_then(alert: str, tmp_path: Path) -> None:
    severity = rules()[alert]["labels"]["severity"]
    case = CASES[alert]
    tests = [{
        "name": f"{alert} #{i}",
        "interval": group.interval,
        "input_series": [{"series": k, "values": v} for k, v in group.series.items()],
        "alert_rule_test": [{
            "eval_time": at, "alertname": alert,
            "exp_alerts": [{"exp_labels": {**labels, "severity": severity},
                            "exp_annotations": rendered(alert, labels, value)}
                           for labels, value in firing]}
            for at, firing in group.expect.items()],
    } for i, group in enumerate(case.groups)]
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({
        "rule_files": [RULES.name], "evaluation_interval": case.evaluation_interval,
        "tests": tests}, sort_keys=False))
    res = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


if __name__ == "__main__":
    PROMETHEUS_RULE.write_text(render_prometheus_rule())
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")

"""The shipped dashboard and alert rules ask only for what the controller exports.

Every PromQL expression in `manifests/monitoring/` (the rules, every dashboard query and
template variable) names only metrics `controller/metrics.py` defines — read from the
module, so a renamed or removed metric fails here instead of leaving an empty panel or an
alert that can never fire. The dashboard is valid Grafana JSON: unique panel ids, panels
that do not overlap, every query on the dashboard's data source, and a panel for each
thing an on-call person looks for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

from controller import metrics
from controller.model import Phase

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests/monitoring"
DASHBOARD = MONITORING / "failover-dashboard.json"
SUFFIXES = {"counter": ["_total", "_created"], "gauge": [""],
            "histogram": ["_bucket", "_sum", "_count", "_created"]}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
METRICS = (MetricWrapperBase, metrics.PlanGauge)


def exported() -> set[str]:
    """The series names the metrics of controller/metrics.py expose."""
    found = [m for m in vars(metrics).values() if isinstance(m, METRICS)]
    return {m._name + suffix for m in found for suffix in SUFFIXES[m._type]}


def labels() -> dict[str, set[str]]:
    """Each exported series name -> its label names (plus the target labels Prometheus adds)."""
    found = [m for m in vars(metrics).values() if isinstance(m, METRICS)]
    return {m._name + suffix: {*m._labelnames, "instance", "job"}
            | ({"le"} if suffix == "_bucket" else set())
            for m in found for suffix in SUFFIXES[m._type]}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (matchers, by/on/... lists), durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                  expr)
    return {m.group(1) for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr)
            if not m.group(2) and m.group(1) not in KEYWORDS}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            [(metric, _)] = re.findall(r"^label_values\((\w+), (\w+)\)$",
                                       var["query"]["query"])
            queries.append(metric)
    return queries


def rule_queries() -> list[str]:
    rules = yaml.safe_load((MONITORING / "failover.rules.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    assert metric_names('sum by (plan, le) (rate(a_total{plan=~"$plan"}[5m])) > 0 '
                        'and ignoring (phase) b offset 5m or time() - c > 365 * 86400') == {
        "a_total", "b", "c"}
    assert "failover_probe_failures_total" in exported()
    assert "failover_step_seconds_since_detection_sum" in exported()


def test_every_query_names_only_metrics_the_controller_exports() -> None:
    known = exported()
    for expr in rule_queries() + dashboard_queries():
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, (f"{sorted(names - known)} in {expr!r} is not exported by "
                                "controller/metrics.py")


def test_every_label_matcher_names_a_label_and_phase_the_controller_uses() -> None:
    """`phase="FailingOver"` on a metric without that label, or a phase renamed in
    controller/model.py, would silently match nothing."""
    known = labels()
    phases = {p.value for p in Phase}
    for expr in rule_queries() + dashboard_queries():
        for metric, matchers in re.findall(r"(\w+)\{([^}]*)\}", expr):
            for name, value in re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)"', matchers):
                assert name in known[metric], f"{metric} has no label {name}: {expr!r}"
                if name == "phase":
                    assert set(value.split("|")) <= phases, f"unknown phase in {expr!r}"


def test_the_dashboard_shows_what_on_call_looks_for() -> None:
    shown = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert {
        "failover_plan_phase", "failover_incident_level",  # phase and level per plan
        "failover_step_seconds_since_detection_sum", "failover_step_target_seconds",
        "failover_probe_failures_total", "failover_backup_site_readiness_percent",
        "failover_backup_newest_verified_timestamp_seconds",
        "failover_backup_rpo_budget_seconds", "failover_drill_last_passed_timestamp_seconds",
        "failover_controller_last_reconcile_timestamp_seconds",
    } <= shown


def test_the_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and "plan" in variables
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    for panel in panels():
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])


def test_the_kustomization_ships_the_rules_the_scrape_and_the_dashboard() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file(), resource
    kinds = {yaml.safe_load((MONITORING / r).read_text())["kind"]
             for r in kustomization["resources"]}
    assert kinds == {"PrometheusRule", "PodMonitor"}
    [generated] = kustomization["configMapGenerator"]
    assert generated["files"] == [DASHBOARD.name]
    assert generated["options"]["labels"] == {"grafana_dashboard": "1"}
    deployment = yaml.safe_load((ROOT / "manifests/deploy/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"][
        "labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports

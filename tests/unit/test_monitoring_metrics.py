"""The metrics the shipped alerts need are exported with the values the alerts assume.

- `metrics.declare` starts a plan's counters at 0 (so the first missed target shows as an
  increase and `FailoverStepTargetMissed` fires) and exports each step's target;
- the reconcile heartbeat is served at /metrics once the loop beats
  (`ControllerNotReconciling`);
- a readiness check of a restore step exports the newest verified backup's time and the
  RPO budget, 0 when none is verified so `BackupOlderThanRPO` fires;
- a drill writes `drill.prom`; only a passing drill writes a last-passed time
  (`NoPassingDrill`), and a second drill in the same process writes only itself;
- `metrics.forget` drops every series of a plan (a replica that stops leading);
- everything passes `promtool check metrics` (Prometheus's naming conventions).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from controller import metrics
from controller.api import Health, serve
from controller.drill.reports import write_reports
from controller.drill.runner import run_drill
from controller.journal import Journal
from controller.plan import FailoverPlan, parse_plan

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests/examples/memory-drill.yaml"


def example_plan(tmp_path: Path) -> FailoverPlan:
    """The in-memory example plan, its host lock in `tmp_path`."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["spec"]["coordination"] = {"kind": "host", "options": {"lockDir": str(tmp_path)}}
    return parse_plan(data)


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_declare_starts_counters_at_zero_and_exports_step_targets(tmp_path: Path) -> None:
    plan = example_plan(tmp_path)
    metrics.forget(plan.name)  # other tests in this process ran the same plan
    metrics.declare(plan)
    for step in plan.spec.steps:
        assert value("failover_step_targets_missed_total", plan=plan.name, step=step.name) == 0
        if step.target is not None:
            assert value("failover_step_target_seconds", plan=plan.name,
                         step=step.name) == step.target
    for service in plan.spec.services:
        assert value("failover_probe_failures_total", plan=plan.name,
                     service=service.name) == 0


def test_backup_checked_exports_the_newest_verified_backup_and_the_budget() -> None:
    metrics.backup_checked("shop", "restore-db", "orders", taken_at=1_700_000_000.0,
                           rpo=3600.0)
    labels = {"plan": "shop", "step": "restore-db", "dataset": "orders"}
    assert value("failover_backup_newest_verified_timestamp_seconds", **labels) == 1.7e9
    assert value("failover_backup_rpo_budget_seconds", **labels) == 3600
    metrics.backup_checked("shop", "restore-db", "orders", taken_at=None, rpo=3600.0)
    assert value("failover_backup_newest_verified_timestamp_seconds", **labels) == 0


def test_the_reconcile_heartbeat_is_served_at_metrics() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    health = Health(stale_after=30, ready_check=lambda: None)
    server = serve(health, "127.0.0.1", port)
    try:
        before = time.time()
        health.beat()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "failover_controller_last_reconcile_timestamp_seconds"]
    [sample] = family.samples
    assert before <= sample.value <= time.time()


def drill_file(out: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families((out / "drill.prom").read_text()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def test_a_drill_writes_its_outcome_for_the_no_passing_drill_alert(tmp_path: Path) -> None:
    plan = example_plan(tmp_path)
    journal = Journal(tmp_path / "journal.db")
    try:
        before = time.time()
        verdict = run_drill(plan, journal, tmp_path / "passed", echo=lambda _: None)
    finally:
        journal.close()
    assert verdict["passed"], verdict["checks"]
    key = (("plan", plan.name), ("scenario", ""))
    passed = drill_file(tmp_path / "passed")
    assert passed["failover_drill_passed"] == {key: 1}
    [ended] = passed["failover_drill_last_timestamp_seconds"].values()
    assert before <= ended <= time.time()
    assert passed["failover_drill_last_passed_timestamp_seconds"] == {key: ended}

    write_reports(tmp_path / "failed", {**verdict, "plan": "other", "passed": False})
    failed = drill_file(tmp_path / "failed")
    other = (("plan", "other"), ("scenario", ""))
    assert failed["failover_drill_passed"] == {other: 0}  # this drill only, not plan's
    assert "failover_drill_last_passed_timestamp_seconds" not in failed


def test_exported_metrics_follow_prometheus_naming(tmp_path: Path) -> None:
    metrics.declare(example_plan(tmp_path))
    metrics.backup_checked("shop", "restore-db", "orders", taken_at=None, rpo=3600.0)
    metrics.drill_ended("shop", "", passed=True, at=1.0)
    tool = shutil.which("promtool")
    assert tool, "promtool not found: scripts/setup installs it (Debian package prometheus)"
    res = subprocess.run([tool, "check", "metrics"], capture_output=True, text=True,
                         input=(generate_latest(REGISTRY) + generate_latest(
                             metrics.DRILLS)).decode(), timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_forget_drops_every_series_of_the_plan_and_only_those() -> None:
    """What the operator calls when it stops leading a plan: an ex-leader that went on
    exporting `FailingOver` would keep `FailoverStarted` firing."""
    per_plan = [m for m in vars(metrics).values()
                if isinstance(m, (MetricWrapperBase, metrics.PlanGauge))
                and "plan" in m._labelnames and not m._name.startswith("failover_drill_")]
    assert len(per_plan) >= 12
    for metric in per_plan:
        for plan in ("shop", "other"):
            metric.labels(**{name: "x" for name in metric._labelnames} | {"plan": plan})
    metrics.forget("shop")
    left = {s.labels.get("plan") for f in REGISTRY.collect() for s in f.samples}
    assert "shop" not in left and "other" in left

"""Prometheus metrics of the controller, recorded by the engine as it observes and acts.

One registry per process (prometheus-client's default), exposed by `api.py` at /metrics.
Labels are plan, service, step and data-set names only — never values that could carry
secrets. A drill is a batch job, not a server: its metrics live in `DRILLS`, a registry of
their own that the drill writes as a file (`drill.prom`) for a Pushgateway or node
exporter's textfile collector. The alert rules and the dashboard in `manifests/monitoring/`
query only the metrics defined here (a test checks it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.plan import FailoverPlan


class _Row:
    __slots__ = ("_gauge", "_key")

    def __init__(self, gauge: PlanGauge, key: tuple[str, ...]):
        self._gauge, self._key = gauge, key

    def set(self, value: float) -> None:
        with self._gauge._lock:
            self._gauge._values[self._key] = float(value)


class PlanGauge(Collector):
    """A labelled Gauge kept as one dict row per series, exported exactly as
    prometheus-client's `Gauge` (`labels(...).set(v)`, `remove_by_labels`): its Gauge
    holds a value object and a lock per series, ~700 bytes, and a plan has a dozen
    series (ten phases alone), ~9 KB of every plan's memory (issue 20)."""

    _type = "gauge"  # and `_name`, `_labelnames`: read as a Gauge's by the monitoring tests

    def __init__(self, name: str, documentation: str, labelnames: list[str],
                 registry: CollectorRegistry | None = REGISTRY):
        self._name, self._doc, self._labelnames = name, documentation, tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str, **named: str) -> _Row:
        if named:
            values = tuple(named[name] for name in self._labelnames if name in named)
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name}: labels {self._labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            self._values.setdefault(key, 0.0)  # as a Gauge's series: there from labels() on
        return _Row(self, key)

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        where = [(self._labelnames.index(k), v) for k, v in labels.items()]
        with self._lock:
            for key in [k for k in self._values if all(k[i] == v for i, v in where)]:
                del self._values[key]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            rows = list(self._values.items())
        for key, value in rows:
            family.add_metric(key, value)
        yield family


PROBE_LATENCY = Histogram(
    "failover_probe_latency_seconds", "Probe round-trip time", ["plan", "service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROBE_FAILURES = Counter("failover_probe_failures_total", "Failed probe samples",
                         ["plan", "service"])
PROBE_INCONCLUSIVE = Counter(
    "failover_probe_inconclusive_total",
    "Probe samples not counted: a timeout while the controller's probe loop was late "
    "(the controller is overloaded; an outage is detected up to consecutiveFailures "
    "probes late)", ["plan", "service"])
AVAILABILITY = PlanGauge("failover_core_availability_percent",
                         "Core-service availability over the trigger window", ["plan"])
SERVICE_DOWN = PlanGauge("failover_service_down", "1 while a service counts as down",
                         ["plan", "service"])
PHASE = PlanGauge("failover_plan_phase", "1 for the plan's current phase", ["plan", "phase"])
LEVEL = PlanGauge("failover_incident_level",
                  "Response level of the active incident (0: none)", ["plan"])
STEP_SECONDS = Histogram(
    "failover_step_seconds_since_detection", "When each step finished, from detection",
    ["plan", "step", "status"], buckets=(1, 10, 60, 300, 600, 1800, 3600, 7200, 14400))
TARGETS_MISSED = Counter("failover_step_targets_missed_total", "Steps that missed their target",
                         ["plan", "step"])
READINESS = PlanGauge("failover_backup_site_readiness_percent",
                      "Share of readiness checks passing", ["plan"])
STEP_TARGET = PlanGauge("failover_step_target_seconds",
                        "Each step's time target, from detection", ["plan", "step"])
RECONCILED = Gauge("failover_controller_last_reconcile_timestamp_seconds",
                   "When the controller last completed a reconcile cycle (Unix time)")
BACKUP_TAKEN = PlanGauge(
    "failover_backup_newest_verified_timestamp_seconds",
    "When the newest verified backup of a restored data set was taken (0: none verified)",
    ["plan", "step", "dataset"])
RPO_BUDGET = PlanGauge("failover_backup_rpo_budget_seconds",
                       "The oldest data a restore step may restore (its RPO budget)",
                       ["plan", "step", "dataset"])

DRILLS = CollectorRegistry()
DRILL_ENDED = Gauge("failover_drill_last_timestamp_seconds", "When the last drill ended",
                    ["plan", "scenario"], registry=DRILLS)
DRILL_PASSED = Gauge("failover_drill_passed", "1 when the last drill passed, else 0",
                     ["plan", "scenario"], registry=DRILLS)
DRILL_LAST_PASSED = Gauge("failover_drill_last_passed_timestamp_seconds",
                          "When the last passing drill ended (written by passing drills only)",
                          ["plan", "scenario"], registry=DRILLS)


def declare(plan: FailoverPlan) -> None:
    """Create the plan's series before anything happens: step targets to compare durations
    against, and counters at 0 — a counter that first appears at 1 shows no `increase()`,
    so its first miss or failure would never alert."""
    for step in plan.spec.steps:
        TARGETS_MISSED.labels(plan.name, step.name)
        if step.target is not None:
            STEP_TARGET.labels(plan.name, step.name).set(step.target)
    for service in plan.spec.services:
        PROBE_FAILURES.labels(plan.name, service.name)
        PROBE_INCONCLUSIVE.labels(plan.name, service.name)


def forget(plan: str) -> None:
    """Drop the plan's series: a replica that no longer leads (or a deleted plan) must not
    go on exporting the last phase it saw, or alerts would fire on it for ever."""
    for metric in (PROBE_LATENCY, PROBE_FAILURES, PROBE_INCONCLUSIVE, AVAILABILITY,
                   SERVICE_DOWN, PHASE, LEVEL, STEP_SECONDS, TARGETS_MISSED, READINESS,
                   STEP_TARGET, BACKUP_TAKEN, RPO_BUDGET):
        metric.remove_by_labels({"plan": plan})


def backup_checked(plan: str, step: str, dataset: str, *, taken_at: float | None,
                   rpo: float) -> None:
    """What the readiness check of a restore step found: when the newest verified backup
    was taken (None: none is verified) and the step's RPO budget."""
    BACKUP_TAKEN.labels(plan, step, dataset).set(taken_at or 0.0)
    RPO_BUDGET.labels(plan, step, dataset).set(rpo)


def drill_ended(plan: str, scenario: str, *, passed: bool, at: float) -> None:
    """Record a drill's outcome in `DRILLS` (this drill only: a process may run several).
    A failed drill writes no last-passed time, so a Pushgateway POST keeps the last one."""
    for gauge in (DRILL_ENDED, DRILL_PASSED, DRILL_LAST_PASSED):
        gauge.clear()
    DRILL_ENDED.labels(plan, scenario).set(at)
    DRILL_PASSED.labels(plan, scenario).set(int(passed))
    if passed:
        DRILL_LAST_PASSED.labels(plan, scenario).set(at)

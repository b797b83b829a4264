"""Prometheus metrics of the controller, recorded by the engine as it observes and acts.

One registry per process (prometheus-client's default), exposed by `api.py` at /metrics.
Labels are plan, service and step names only — never values that could carry secrets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PROBE_LATENCY = Histogram(
    "failover_probe_latency_seconds", "Probe round-trip time", ["plan", "service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PROBE_FAILURES = Counter("failover_probe_failures_total", "Failed probe samples",
                         ["plan", "service"])
AVAILABILITY = Gauge("failover_core_availability_percent",
                     "Core-service availability over the trigger window", ["plan"])
SERVICE_DOWN = Gauge("failover_service_down", "1 while a service counts as down",
                     ["plan", "service"])
PHASE = Gauge("failover_plan_phase", "1 for the plan's current phase", ["plan", "phase"])
LEVEL = Gauge("failover_incident_level", "Response level of the active incident (0: none)",
              ["plan"])
STEP_SECONDS = Histogram(
    "failover_step_seconds_since_detection", "When each step finished, from detection",
    ["plan", "step", "status"], buckets=(1, 10, 60, 300, 600, 1800, 3600, 7200, 14400))
TARGETS_MISSED = Counter("failover_step_targets_missed_total", "Steps that missed their target",
                         ["plan", "step"])
READINESS = Gauge("failover_backup_site_readiness_percent", "Share of readiness checks passing",
                  ["plan"])

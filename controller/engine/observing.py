"""What the engine observes besides deciding: the probe metrics of each cycle and, while
the plan is quiet, the backup site's read-only readiness checks every
`spec.readinessInterval`."""

from __future__ import annotations

import logging
from typing import Any

from controller import metrics, policy, readiness
from controller.backends import Backends
from controller.engine.core import Core
from controller.engine.store import Store
from controller.journal import PlanState
from controller.model import Sample

log = logging.getLogger(__name__)


class Observer:
    def __init__(self, core: Core, store: Store, backends: Backends):
        self.core, self.store, self.backends = core, store, backends
        metrics.declare(core.plan)  # step targets, and counters at 0 so a first miss shows

    def measure(self, samples: list[Sample], pol: policy.PolicyState) -> None:
        plan, name = self.core.plan, self.core.name
        for sample in samples:
            if sample.latency is not None:
                metrics.PROBE_LATENCY.labels(name, sample.service).observe(sample.latency)
            if sample.inconclusive:  # the controller was late: not the service's failure
                metrics.PROBE_INCONCLUSIVE.labels(name, sample.service).inc()
            elif not sample.ok:
                metrics.PROBE_FAILURES.labels(name, sample.service).inc()
        seen = policy.assess(plan, pol, self.core.clock.now())
        metrics.AVAILABILITY.labels(name).set(seen.availability)
        for svc in plan.spec.services:
            metrics.SERVICE_DOWN.labels(name, svc.name).set(int(svc.name in seen.down))

    def readiness_due(self, st: PlanState) -> bool:
        last = st.readiness.get("checkedAt", 0)
        return bool(self.core.clock.now() - last >= self.core.plan.spec.readiness_interval)

    def check_readiness(self) -> dict[str, Any]:
        """Run the read-only readiness checks of the backup site and keep the result."""
        results = self.readiness()
        self.store.save(self.store.state(), readiness=results)
        return results

    def readiness(self) -> dict[str, Any]:
        """Run the read-only readiness checks of the backup site: the result to keep (a
        cycle keeps it with its decision, in one write)."""
        plan, now = self.core.plan, self.core.clock.now()
        results = readiness.summary(readiness.checks(plan, self.backends, now=now,
                                                     journal=self.core.journal))
        results["checkedAt"] = now
        if results["failed"]:
            log.warning("%s: backup site readiness %s %%: %s", plan.name, results["score"],
                        "; ".join(f"{c['name']}: {c['detail']}" for c in results["failed"]))
        return results

"""Probing a plan's services and signals: a running scheduler for the reconcile loop
(`observe`) and one concurrent round for commands and steps that need fresh samples now
(`probe_once`). Below the engine and the step actions, so both can use it."""

from __future__ import annotations

import asyncio

from controller.backends import Backends
from controller.model import Sample
from controller.plan import FailoverPlan
from controller.probes.scheduler import News, ProbeScheduler, targets_from_plan


def observe(plan: FailoverPlan, backends: Backends, *, news: News | None = None
            ) -> ProbeScheduler:
    """A probe scheduler for every service and signal of the plan (start it, drain it);
    it tells `news` (its own unless given) of every round that may change a decision, so
    the loop can run a cycle at once (`scheduler.news.wait(tick)` between cycles)."""
    return ProbeScheduler(targets_from_plan(plan, backends.probe), news=news, plan=plan.name)


def probe_once(plan: FailoverPlan, backends: Backends,
               services: list[str] | None = None) -> list[Sample]:
    """Probe the given services (default: all services and signals) once, concurrently,
    each bounded by its timeout and combined k-of-n like the running scheduler does."""
    targets = targets_from_plan(plan, backends.probe)
    if services is not None:
        targets = [t for t in targets if t.service in services]
    return asyncio.run(ProbeScheduler(targets, plan=plan.name).run_once())

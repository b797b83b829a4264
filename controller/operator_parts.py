"""The operator's seams: what a replica is built from, so the same `Operator` runs in a
pod and in the safety simulation (tests/reliability/sim/operators.py).

- `Stop`: what the election and watch loops wait on (a `threading.Event`, or the
  simulation's on its own clock);
- `Samples` / `Probing`: where each plan's probe results come from; `SharedProbes`, the
  process's own, runs every plan's probe scheduler on one shared loop and thread and
  tells the operator at once of a round that may change a plan's decision (`News`);
- `Parts`: the clock, how a step's work runs, the backends and the probing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from controller.backends import Backends
from controller.clock import Clock
from controller.executor import Spawn, spawn_thread
from controller.model import Sample
from controller.plan import FailoverPlan
from controller.probes.scheduler import News, ProbeScheduler, SharedLoop
from controller.probing import observe


class Stop(Protocol):
    """What the election and watch loops wait on: a `threading.Event` (the simulation
    gives one on its own clock)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Samples(Protocol):
    """A plan's probe results as they come in (`ProbeScheduler`)."""

    @property
    def pending(self) -> bool: ...

    def drain(self) -> list[Sample]: ...


class Probing(Protocol):
    """Where each watched plan's samples come from: probes started for a plan (with the
    backends its engine uses), stopped when the plan is forgotten, all closed on exit."""

    def start(self, plan: FailoverPlan, backends: Backends) -> Samples: ...

    def stop(self, samples: Samples) -> None: ...

    def close(self) -> None: ...


class SharedProbes:
    """The default `Probing`: every plan's probe scheduler on one shared loop and thread.
    A round that may change a plan's decision (`News`) calls `on_news(plan name)`."""

    def __init__(self, on_news: Callable[[str], None] = lambda name: None) -> None:
        self._loop = SharedLoop()
        self._started: dict[int, ProbeScheduler] = {}
        self._on_news = on_news

    def start(self, plan: FailoverPlan, backends: Backends) -> Samples:
        scheduler = observe(plan, backends, news=News(partial(self._on_news, plan.name)))
        self._loop.start(scheduler)
        self._started[id(scheduler)] = scheduler
        return scheduler

    def stop(self, samples: Samples) -> None:
        scheduler = self._started.pop(id(samples), None)
        if scheduler is not None:
            self._loop.stop(scheduler)

    def close(self) -> None:
        self._started.clear()
        self._loop.close()


Audit = Callable[..., None]


@dataclass(frozen=True)
class Parts:
    """How a replica builds each plan's engine: its clock, how a step's work runs, the
    backends (given the plan and its audit) and where samples come from. None: the
    process's own (wall clock, threads, `Backends` with the operator's Secrets, probes on
    a shared loop); the safety simulation gives its simulated ones."""

    clock: Clock | None = None
    spawn: Spawn = spawn_thread
    backends: Callable[[FailoverPlan, Audit], Backends] | None = None
    probing: Probing | None = None

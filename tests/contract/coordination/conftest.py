"""A real etcd for the coordination contract tests, and a helper to build coordinators.

- `etcd`: one Debian etcd member on free ports (`controller.drill.servers.etcd`), started
  once per module with fast timings so a 1 s lease can expire, stopped by PID at the end.
  Each test uses its own plan name (`plan`), so tests sharing the server never meet.
- `etcd_coordinator(url, **options)`: an `EtcdCoordinator` built the way a plan builds it
  (`spec.coordination` options through `coordination.parse_options`).

A missing `etcd` binary fails the tests (ServerError); nothing is skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller import coordination
from controller.coordination.etcd import EtcdCoordinator
from controller.drill.servers.etcd import EtcdServer

_PLANS = itertools.count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer(fast=True) as server:
        yield server


@pytest.fixture
def plan() -> str:
    return f"plan-{next(_PLANS)}"


EtcdFactory = Callable[..., EtcdCoordinator]


@pytest.fixture
def etcd_coordinator(plan: str) -> EtcdFactory:
    def make(*endpoints: str, secrets: Any = None, **options: Any) -> EtcdCoordinator:
        parsed = coordination.parse_options("etcd", {"endpoints": list(endpoints), **options})
        return EtcdCoordinator(parsed, plan=plan, secrets=secrets)  # type: ignore[arg-type]

    return make

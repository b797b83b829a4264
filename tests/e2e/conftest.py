"""Fixtures of the operator's end-to-end tests: `replicas` starts `failoverctl operator`
subprocesses (`tests.e2e.test_operator.Replica`) and kills what is left at the end."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.drill.servers.kube import KubeServers
from tests.e2e.test_operator import Replica


@pytest.fixture
def replicas(kube: KubeServers, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    started: list[Replica] = []

    def start(identity: str, listen: int | None = None, **kwargs: Any) -> Replica:
        started.append(Replica(kube, tmp_path, identity, listen, **kwargs))
        return started[-1]

    yield start
    for r in started:
        r.stop(signal.SIGKILL if r.proc.poll() is None else signal.SIGTERM)

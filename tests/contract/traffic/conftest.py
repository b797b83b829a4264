"""A real HAProxy edge for the traffic contract tests, started once per session.

- `haproxy`: two real HTTP servers (primary, backup) behind a real `haproxy`, admin socket
  in a temp dir (controller.drill.servers.haproxy), stopped by PID at the end;
- `edge`: one traffic world behind the `TrafficBackend` contract, parametrized over the
  in-memory fake and HAProxy, built through the registry like a plan would build it.
  Both start at {primary: 100, backup: 0}: the session-wide HAProxy is put back to that
  state before each test.

A missing `haproxy` makes the fixture fail loudly (ServerError); nothing is skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller import registry
from controller.drill.servers.haproxy import HaproxyServers
from controller.secrets import Secrets

KINDS = ("memory", "haproxy")
ORIGINAL = {"primary": 100, "backup": 0}
_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def haproxy() -> Iterator[HaproxyServers]:
    with HaproxyServers() as servers:
        yield servers


@pytest.fixture
def edge_haproxy(haproxy: HaproxyServers) -> HaproxyServers:
    """The session's HAProxy, back at its initial weights (primary 100, backup 0)."""
    haproxy.reset()
    return haproxy


@dataclass
class Edge:
    kind: str
    backend: Any


@pytest.fixture(params=KINDS)
def edge(request: pytest.FixtureRequest) -> Edge:
    kind: str = request.param
    if kind == "memory":
        options: dict[str, Any] = {"key": f"contract-{next(_COUNTER)}", "weights": ORIGINAL}
    else:
        options = request.getfixturevalue("edge_haproxy").options()
    return Edge(kind, registry.build("traffic", kind, options, secrets=Secrets()))

"""The traffic worlds the `TrafficBackend` contract runs on, each watched independently.

- `haproxy`: two real HTTP servers (primary, backup) behind a real `haproxy`, admin socket
  in a temp dir (controller.drill.servers.haproxy), started once per session, stopped by
  PID at the end; `edge_haproxy` puts it back to {primary: 100, backup: 0};
- `edge`: one traffic world behind the contract, parametrized over the in-memory fake,
  HAProxy, Istio, Gateway API and SMI (the mesh objects on the session's real
  kube-apiserver, see `meshes`), built through the registry like a plan would build it.
  Every world starts at {primary: 100, backup: 0}, and `Edge.history()` is what an
  observer outside the backend saw after each write: the fake's recorded writes, the
  weights HAProxy reports after each `set` command reached its admin socket (through a
  recording relay in front of it), a watch on the mesh object.

A missing `haproxy` or kube-apiserver makes the fixture fail loudly; nothing is skipped.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller import registry
from controller.drill.servers.haproxy import HaproxyServers
from controller.drill.servers.kube import KubeServers
from controller.model import Weights
from controller.secrets import Secrets
from controller.testing import FakeTrafficBackend
from controller.traffic import TrafficBackend
from tests.contract.traffic.meshes import KINDS as MESHES
from tests.contract.traffic.meshes import make_mesh

KINDS = ("memory", "haproxy", *sorted(MESHES))
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


class RecordingRelay:
    """A unix socket in front of HAProxy's admin socket: passes each command line through
    and, after one that sets something, records the weights HAProxy then reports."""

    def __init__(self, edge: HaproxyServers, path: Path):
        self.path = path
        self.states: list[Weights] = []
        self._edge, self._observer = edge, registry.build(
            "traffic", "haproxy", edge.options(), secrets=Secrets())
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                line = b""
                while not line.endswith(b"\n") and (chunk := conn.recv(65536)):
                    line += chunk
                command = line.decode().strip()
                reply = self._edge.command(command)
                if command.startswith("set "):  # applied once HAProxy has answered
                    self.states.append(self._observer.current())
                conn.sendall(reply.encode())

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (Linux)
        self._listener.close()
        self._thread.join(10)


@dataclass
class Edge:
    kind: str
    backend: TrafficBackend
    history: Callable[[], list[Weights]]  # the weights after each write, as observed


@pytest.fixture(params=KINDS)
def edge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Edge]:
    kind: str = request.param
    if kind == "memory":
        fake = FakeTrafficBackend(FakeTrafficBackend.Options.model_validate(
            {"key": f"contract-{next(_COUNTER)}", "weights": ORIGINAL}))
        yield Edge(kind, fake, lambda: [w["weights"] for w in fake.writes()])
    elif kind == "haproxy":
        servers: HaproxyServers = request.getfixturevalue("edge_haproxy")
        relay = RecordingRelay(servers, tmp_path / "relay.sock")
        backend = registry.build("traffic", kind, servers.options(socket=str(relay.path)),
                                 secrets=Secrets())
        yield Edge(kind, backend, lambda: list(relay.states))
        relay.close()
    else:
        kube: KubeServers = request.getfixturevalue("kube")
        mesh = make_mesh(MESHES[kind], kube)
        dests = mesh.kind.options["destinations"]  # keyed dc-a, dc-b: here primary, backup
        backend = mesh.backend(destinations={"primary": dests["dc-a"],
                                             "backup": dests["dc-b"]})
        since = mesh.resource_version()

        def history() -> list[Weights]:
            return [{"primary": w[0], "backup": w[1]} for w in mesh.history(since)]
        yield Edge(kind, backend, history)


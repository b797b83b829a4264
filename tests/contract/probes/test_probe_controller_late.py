"""Real servers on free ports, and a probe loop that is stalled while the probes are in
flight (as when thousands of plans starve it), through the plan's own targets, the
scheduler and the policy:

- a healthy HTTP server whose answer the stalled loop reads late: the deadline moves by
  the stall, the rounds are good (or at worst excused) and nothing trips;
- an HTTP server that accepts and never answers, and a blackholed address (a listener
  whose accept queue is full, so a connect never completes), each while the loop is
  stalled: the timeouts are inconclusive, but at most consecutiveFailures (3) of them are
  excused, so the service is down after 2 x 3 rounds — the stated bound, never later.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.backends import Backends
from controller.model import Sample
from controller.plan import FailoverPlan, parse_plan
from controller.policy import PolicyState, assess, evaluate
from controller.probes.scheduler import ProbeScheduler, targets_from_plan

ROOT = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
TIMEOUT = 0.5
FAILURES = 3  # the plan's consecutiveFailures: as many inconclusive rounds are excused
BOUND = 2 * FAILURES  # rounds after which a service that fails every round is down


class Server(ThreadingHTTPServer):
    daemon_threads = True
    loop: asyncio.AbstractEventLoop | None = None  # the probe loop, to stall from here
    release: threading.Event  # ends the hung requests when the test is over


def stall(loop: asyncio.AbstractEventLoop, seconds: float) -> threading.Event:
    """Block `loop` for `seconds` (as a starved controller's loop is); set when it ends."""
    over = threading.Event()

    def block() -> None:
        time.sleep(seconds)
        over.set()
    loop.call_soon_threadsafe(block)
    return over


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        assert self.server.loop is not None
        if self.path == "/healthy":  # answers the moment the prober can read again
            stall(self.server.loop, 1.2 * TIMEOUT).wait(30)
        else:  # /hang: stalls the prober, then never answers
            stall(self.server.loop, 0.4 * TIMEOUT)
            self.server.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.release = threading.Event()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(10)


@pytest.fixture
def blackholed() -> Iterator[int]:
    """A port on which a connect never completes: the listener's accept queue is full, so
    the kernel drops further SYNs, as a blackholed network does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    check = socket.socket()
    check.settimeout(1.0)
    try:
        with pytest.raises(TimeoutError):  # the kernel must drop SYNs on a full queue
            check.connect(("127.0.0.1", port))
        yield port
    finally:
        for sock in [check, *fillers, listener]:
            sock.close()


def plan_probing(probe: dict[str, Any]) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    data["spec"]["services"][0] = {"name": "web", "core": True, "interval": f"{TIMEOUT}s",
                                   "timeout": f"{TIMEOUT}s", "probes": [probe]}
    data["spec"]["trigger"].update(consecutiveFailures=FAILURES, window="60s")
    return parse_plan(data)


def rounds(plan: FailoverPlan, n: int,
           on_loop: Callable[[asyncio.AbstractEventLoop], None] = lambda loop: None
           ) -> list[Sample]:
    """The first `n` samples of web from the plan's running scheduler (its other services
    are in-memory, always up); `on_loop` gets the probe loop."""
    samples: list[Sample] = []

    async def main() -> None:
        stop = asyncio.Event()

        def sink(sample: Sample) -> None:
            if sample.service != "web":
                return
            samples.append(sample)
            if len(samples) == n:
                stop.set()
        on_loop(asyncio.get_running_loop())
        scheduler = ProbeScheduler(targets_from_plan(plan, Backends(plan).probe), sink,
                                   plan=plan.name)
        await scheduler.run(stop)
    asyncio.run(main())
    return samples


def down_after(plan: FailoverPlan, samples: list[Sample]) -> list[bool]:
    """Is web down after each sample (a cycle per sample, as the news wakes the loop)?"""
    state, out = PolicyState(), []
    for sample in samples:
        _, state = evaluate(plan, state, [sample], sample.at)
        out.append("web" in assess(plan, state, sample.at).down)
    return out


def excused_then_counted(samples: list[Sample]) -> None:
    assert [s.inconclusive for s in samples] == [True] * FAILURES + [False] * FAILURES
    assert all(not s.ok and "while the controller was late by" in s.detail for s in samples)
    assert samples[0].detail.endswith("; not counted: 1 of 3 excused")
    assert samples[-1].detail.endswith("; counted: 3 already excused since the last good round")


def test_a_healthy_server_read_late_by_a_stalled_loop_never_trips(server: Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/healthy"
    plan = plan_probing({"kind": "http", "options": {"url": url}})
    samples = rounds(plan, BOUND, lambda loop: setattr(server, "loop", loop))
    assert all(s.ok or s.inconclusive for s in samples), [s.detail for s in samples]
    assert not any(down_after(plan, samples))


def test_a_hung_server_on_a_stalled_loop_is_down_within_the_bound(server: Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/hang"
    plan = plan_probing({"kind": "http", "options": {"url": url}})
    samples = rounds(plan, BOUND, lambda loop: setattr(server, "loop", loop))
    excused_then_counted(samples)
    assert down_after(plan, samples) == [False] * (BOUND - 1) + [True]


def test_a_blackholed_address_on_a_stalled_loop_is_down_within_the_bound(
        blackholed: int) -> None:
    plan = plan_probing({"kind": "tcp", "options": {"host": "127.0.0.1", "port": blackholed}})
    stop = threading.Event()

    def stall_often(loop: asyncio.AbstractEventLoop) -> None:
        """Block the loop 100 ms in every 150 ms until the test ends (a starved loop)."""
        def block() -> None:
            if not stop.is_set():
                time.sleep(0.1)
                loop.call_later(0.05, block)
        loop.call_soon(block)
    try:
        samples = rounds(plan, BOUND, stall_often)
    finally:
        stop.set()
    excused_then_counted(samples)
    assert down_after(plan, samples) == [False] * (BOUND - 1) + [True]

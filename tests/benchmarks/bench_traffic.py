"""HAProxy switch benchmark: figures and ratios, not a pass/fail timer.

    .venv/bin/python tests/benchmarks/bench_traffic.py [ROUNDS]            # script (default 300)
    .venv/bin/python -m pytest tests/benchmarks/bench_traffic.py -s        # same, 100 rounds

Starts the launcher's edge (two real HTTP servers behind a real haproxy, admin socket in
a temp dir) and a client thread sending GET / back to back over one kept-alive connection
through the frontend. Measured in the same process, against the same haproxy:

(a) baseline: one bare runtime-API round trip (`set server be_app/web2 weight 0`, a
    no-op, over a fresh unix-socket connection, as the backend opens one per call);
(a2) one `show servers state be_app` round trip (what each read-back costs);
(b) `HaproxyTrafficBackend.shift` from call to return: read, enable the backup, read back,
    drain the primary, read back;
(c) switch latency: from the `shift` call to the first response the client receives from
    the backup (goal from issue 5: under 10 ms);
(d) the same latency for a bare switch: both `set server` commands in one round trip, no
    reads (the floor the runtime API allows).

Every round starts from primary 100 / backup 0 with the client seen answered by the
primary; (c) and (d) alternate round by round so a background load hits both alike.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.drill.servers.haproxy import HEADER, HaproxyServers  # noqa: E402
from controller.traffic.haproxy import HaproxyOptions, HaproxyTrafficBackend  # noqa: E402

ORIGINAL = {"primary": 100, "backup": 0}
CUTOVER = {"backup": 100, "primary": 0}


def figures(values: list[float]) -> str:
    ordered = sorted(values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return (f"p50 {pct(0.5):7.3f} ms   p99 {pct(0.99):7.3f} ms   "
            f"max {ordered[-1] * 1000:7.3f} ms")


def runtime_api(path: Path, line: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


class Watcher:
    """A client thread sending requests back to back; `arm(site)` then `wait()` gives the
    perf_counter() time at which the first response from `site` arrived after arming."""

    def __init__(self, port: int):
        self.port = port
        self.want: str | None = None
        self.armed_at = 0.0
        self.seen_at = 0.0
        self.event = threading.Event()
        self.stop = threading.Event()
        self.requests = self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            now = time.perf_counter()
            self.requests += 1
            if response.status >= 500:
                self.errors += 1
            if (self.want is not None and response.getheader(HEADER) == self.want
                    and now > self.armed_at and not self.event.is_set()):
                self.seen_at = now
                self.event.set()
        conn.close()

    def arm(self, site: str) -> None:
        self.event.clear()
        self.armed_at = time.perf_counter()
        self.want = site

    def wait(self) -> float:
        if not self.event.wait(10):
            raise RuntimeError(f"no answer from {self.want} within 10 s")
        self.want = None
        return self.seen_at


def run(rounds: int) -> dict[str, float]:
    with HaproxyServers() as edge:
        backend = HaproxyTrafficBackend(HaproxyOptions.model_validate(edge.options()))
        sock = edge.socket
        be = edge.backend

        def bare_switch() -> None:
            reply = runtime_api(sock, f"set server {be}/web2 weight 100; "
                                      f"set server {be}/web1 weight 0")
            assert not reply.strip(), reply

        def shift() -> None:
            backend.shift(to="backup", weights=CUTOVER)

        watcher = Watcher(edge.port)
        watcher.thread.start()
        baseline: list[float] = []
        show: list[float] = []
        acked: list[float] = []
        latency: dict[str, list[float]] = {"backend": [], "bare": []}
        pair: tuple[tuple[str, Callable[[], None]], ...] = (("backend", shift),
                                                            ("bare", bare_switch))
        try:
            for i in range(rounds + 5):  # the first 5 rounds warm up and are dropped
                for name, switch in pair if i % 2 == 0 else pair[::-1]:
                    backend.revert(to=ORIGINAL)
                    watcher.arm("primary")
                    watcher.wait()  # the client is being answered by the primary again
                    t = time.perf_counter()
                    assert not runtime_api(sock, f"set server {be}/web2 weight 0").strip()
                    a = time.perf_counter() - t
                    t = time.perf_counter()
                    runtime_api(sock, f"show servers state {be}")
                    s = time.perf_counter() - t
                    watcher.arm("backup")
                    start = time.perf_counter()
                    switch()
                    returned = time.perf_counter() - start
                    first = watcher.wait() - start
                    if i >= 5:
                        latency[name].append(first)
                        if name == "backend":
                            baseline.append(a)
                            show.append(s)
                            acked.append(returned)
        finally:
            watcher.stop.set()
            watcher.thread.join(10)
            backend.revert(to=ORIGINAL)
    base = statistics.median(baseline)
    print(f"\nHAProxy switch on a local haproxy 2.6, {rounds} switches each "
          f"({watcher.requests} client requests, {watcher.errors} errors)")
    print(f"  (a) baseline: one bare runtime-API round trip   {figures(baseline)}")
    print(f"  (a2) one `show servers state` round trip        {figures(show)}")
    print(f"  (b) backend shift(), call to return             {figures(acked)}")
    print(f"  (c) shift() call -> first answer from backup    {figures(latency['backend'])}")
    print(f"  (d) bare switch -> first answer from backup     {figures(latency['bare'])}")
    c50 = statistics.median(latency["backend"])
    c99 = sorted(latency["backend"])[min(len(baseline) - 1, round(0.99 * (len(baseline) - 1)))]
    print(f"  ratios (p50): (b)/(a) = {statistics.median(acked) / base:.1f}x;  "
          f"(c)/(a) = {c50 / base:.1f}x;  (d)/(a) = "
          f"{statistics.median(latency['bare']) / base:.1f}x;  (c)/(d) = "
          f"{c50 / statistics.median(latency['bare']):.2f}x")
    print(f"  goal (c) < 10 ms: p50 {'yes' if c50 < 0.01 else 'NO'}, "
          f"p99 {'yes' if c99 < 0.01 else 'NO'}")
    return {"baseline": base, "shift": statistics.median(acked), "switch p50": c50,
            "switch p99": c99, "errors": float(watcher.errors)}


@pytest.mark.benchmark
def test_haproxy_switch_figures() -> None:
    result = run(100)
    assert result["baseline"] > 0  # figures are printed; no timing is asserted


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 300)

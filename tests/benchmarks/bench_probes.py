"""Probe benchmarks: figures, not a pass/fail timer.

    .venv/bin/python tests/benchmarks/bench_probes.py          # full run (~30 s)
    .venv/bin/python -m pytest tests/benchmarks/bench_probes.py -s   # same, smaller

(a) throughput: N HTTP probes per round against a local keep-alive HTTP server (run in a
    separate process so it does not share this process's core), scheduler rounds versus a
    baseline measured in the same process: the same probes awaited one after another;
    probes per CPU-second of this process = per-core throughput.
(b) schedule lag with many targets at 1 s intervals (in-process no-op probes, so the
    figure is the scheduler's own overhead), p50/p99/max and this process's CPU share;
    and the same with real HTTP probes at a lower count.
(c) detection latency: an HTTP target is switched to 500 and samples flow into the real
    policy (controller.policy.evaluate) with dwell 0; fault-to-trip time is reported as
    a ratio to the floor interval x consecutiveFailures.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.model import Sample  # noqa: E402
from controller.probes import Probe  # noqa: E402
from controller.probes.http import HttpOptions, HttpProbe  # noqa: E402
from controller.probes.scheduler import ProbeScheduler, Target  # noqa: E402

SERVER = r'''
import asyncio, socket, sys
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
BAD = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
state = {"bad": False}
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n", 1)[0]
            if b" /fault" in line: state["bad"] = True
            elif b" /recover" in line: state["bad"] = False
            self.t.write(BAD if state["bad"] and b" /health" in line else OK)
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(P, "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
'''


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def http_probes(url: str, n: int) -> list[HttpProbe]:
    return [HttpProbe(HttpOptions(url=f"{url}/health"), service=f"s{i}") for i in range(n)]


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def throughput(url: str, n: int, rounds: int) -> dict[str, float]:
    probes = http_probes(url, n)
    targets = [Target(p.service, [p], 1.0, 5.0) for p in probes]

    async def sequential() -> float:
        from controller.probes.http import make_session
        session = make_session()
        for p in probes:
            p.use_session(session)
        await probes[0].check()  # warm the connection
        t0 = time.perf_counter()
        for p in probes:
            assert (await p.check()).ok
        wall = time.perf_counter() - t0
        await session.close()
        return n / wall

    async def scheduled() -> tuple[float, float, int]:
        sched = ProbeScheduler(targets)
        await sched.run_once(close=False)  # warm the connection pool
        c0, t0 = cpu(), time.perf_counter()
        failed = 0
        for _ in range(rounds):
            failed += sum(not s.ok for s in await sched.run_once(close=False))
        wall, used = time.perf_counter() - t0, cpu() - c0
        await sched.aclose()
        return n * rounds / wall, n * rounds / used, failed

    seq = asyncio.run(sequential())
    rate, per_cpu, failed = asyncio.run(scheduled())
    return {"sequential": seq, "scheduled": rate, "per_cpu_second": per_cpu,
            "ratio": rate / seq, "failed": failed}


class Noop(Probe):
    def __init__(self, service: str):
        self.service = service

    async def check(self) -> Sample:
        return Sample(self.service, True, time.time(), latency=0.0)


def lag(targets: list[Target], seconds: float) -> dict[str, float]:
    count = 0

    def sink(sample: Sample) -> None:
        nonlocal count
        count += 1

    sched = ProbeScheduler(targets, sink)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await sched.run(stop)

    c0, t0 = cpu(), time.perf_counter()
    asyncio.run(main())
    wall, used = time.perf_counter() - t0, cpu() - c0
    return {"targets": len(targets), "samples_per_s": count / wall,
            "p50_ms": 1000 * sched.stats.lag_percentile(50),
            "p99_ms": 1000 * sched.stats.lag_percentile(99),
            "max_ms": 1000 * sched.stats.lag_percentile(100),
            "cpu_share": used / wall, "failures": sched.stats.failures}


def detection(url: str, interval: float, trials: int) -> dict[str, float]:
    from controller import policy
    from controller.plan import parse_plan

    threshold = 3
    plan = parse_plan({
        "metadata": {"name": "bench"},
        "spec": {
            "sites": {"primary": {"name": "a"}, "backup": {"name": "b"}},
            "services": [{"name": "web", "core": True, "interval": interval,
                          "probes": [{"kind": "memory"}]}],
            "trigger": {"consecutiveFailures": threshold, "dwell": 0, "window": "60s"},
            "backends": [{"name": "n", "role": "notifier", "kind": "memory"}],
            "steps": [{"name": "tell", "action": "notify", "backend": "n"}],
        }})
    import urllib.request

    def trial() -> float:
        urllib.request.urlopen(f"{url}/recover").read()
        probe = HttpProbe(HttpOptions(url=f"{url}/health", timeout=1.0), service="web")
        state, tripped = policy.PolicyState(), asyncio.Event()
        fault_at = 0.0

        def sink(sample: Sample) -> None:
            nonlocal state
            decision, state = policy.evaluate(plan, state, [sample], time.time())
            if decision.action == "trip" and fault_at:
                tripped.set()

        sched = ProbeScheduler([Target("web", [probe], interval, 1.0)], sink, spread=False)

        async def main() -> float:
            nonlocal fault_at
            stop = asyncio.Event()
            task = asyncio.create_task(sched.run(stop))
            await asyncio.sleep(interval * 10.5)  # ten healthy samples of history first
            fault_at = time.time()
            await asyncio.to_thread(lambda: urllib.request.urlopen(f"{url}/fault").read())
            await asyncio.wait_for(tripped.wait(), 30)
            took = time.time() - fault_at
            stop.set()
            await task
            return took

        return asyncio.run(main())

    results = [trial() for _ in range(trials)]
    urllib.request.urlopen(f"{url}/recover").read()
    floor = interval * threshold
    return {"interval_s": interval, "floor_s": floor, "median_s": statistics.median(results),
            "max_s": max(results), "ratio_median": statistics.median(results) / floor,
            "ratio_max": max(results) / floor}


def run(scale: float = 1.0) -> None:
    server = Server()
    try:
        n = 1000
        t = throughput(server.url, n, rounds=max(2, int(10 * scale)))
        print(f"(a) {n} HTTP probes/round: sequential {t['sequential']:.0f}/s, scheduler "
              f"{t['scheduled']:.0f}/s (ratio {t['ratio']:.1f}x), "
              f"{t['per_cpu_second']:.0f} probes per CPU-second of the controller, "
              f"{t['failed']:.0f} failed")
        noop = [Target(f"s{i}", [Noop(f"s{i}")], 1.0, 1.0) for i in range(int(10000 * scale))]
        lg = lag(noop, seconds=max(3.0, 6 * scale))
        print(f"(b) {lg['targets']:.0f} no-op targets @1 s: {lg['samples_per_s']:.0f} samples/s,"
              f" lag p50 {lg['p50_ms']:.2f} ms p99 {lg['p99_ms']:.2f} ms max "
              f"{lg['max_ms']:.1f} ms, CPU share {100 * lg['cpu_share']:.0f} %")
        probes = http_probes(server.url, int(2000 * scale))
        hl = lag([Target(p.service, [p], 1.0, 1.0) for p in probes], seconds=max(3.0, 6 * scale))
        print(f"    {hl['targets']:.0f} HTTP targets @1 s: {hl['samples_per_s']:.0f} samples/s,"
              f" lag p50 {hl['p50_ms']:.2f} ms p99 {hl['p99_ms']:.2f} ms max "
              f"{hl['max_ms']:.1f} ms, CPU share {100 * hl['cpu_share']:.0f} %, "
              f"{hl['failures']:.0f} failed")
        for interval in (0.2, 1.0):
            d = detection(server.url, interval, trials=3 if scale >= 1 else 1)
            print(f"(c) detection @{interval:g} s x 3 failures (floor {d['floor_s']:.2f} s): "
                  f"median {d['median_s']:.3f} s (ratio {d['ratio_median']:.2f}), "
                  f"max {d['max_s']:.3f} s (ratio {d['ratio_max']:.2f})")
    finally:
        server.close()


@pytest.mark.benchmark
def test_bench_probes() -> None:
    run(scale=0.3)


if __name__ == "__main__":
    run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0)


__all__: list[Any] = ["run"]

"""Benchmark: one operator replica watching many FailoverPlans on a real kube-apiserver.

Prints the time to the first status of every plan, the replica's steady-state CPU and
memory (read from /proc), and the reconcile latency of a status change: a spec edit
(a new generation) until the status reports that generation, p50/p99 over a sample of
plans, against a bare GET of the same object measured in the same process.

    .venv/bin/python tests/benchmarks/bench_operator.py [--plans 1000] [--sample 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.crd import GROUP, PLURAL, VERSION  # noqa: E402
from controller.drill.servers.kube import KubeServers  # noqa: E402


def plan(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FailoverPlan",
            "metadata": {"name": name},
            "spec": {"sites": {"primary": {"name": "dc-a"}, "backup": {"name": "dc-b"}},
                     "services": [{"name": "api", "core": True, "interval": "30s",
                                   "probes": [{"kind": "memory",
                                               "options": {"key": f"{name}-site"}}]}],
                     "backends": [{"name": "edge", "role": "traffic", "kind": "memory",
                                   "options": {"key": f"{name}-edge",
                                               "weights": {"dc-a": 100, "dc-b": 0}}}],
                     "steps": [{"name": "redirect", "action": "traffic", "backend": "edge",
                                "target": "1h"}]}}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--steady", type=float, default=20.0, help="seconds of steady state")
    args = ap.parse_args()
    with KubeServers() as kube:
        admin, ns = kube.kube("admin"), kube.namespace
        t = time.perf_counter()
        names = [f"plan-{i:04d}" for i in range(args.plans)]
        for name in names:
            admin.create(GROUP, VERSION, ns, PLURAL, plan(name))
        print(f"created {args.plans} FailoverPlans in {time.perf_counter() - t:.1f} s")

        work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        log = (work / "operator.log").open("w")
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--journal", str(work / "j.db"), "operator",
             "--namespace", ns, "--kubeconfig", str(kube.kubeconfig("controller")),
             "--identity", "bench"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "FAILOVER_TICK": "1"})
        try:
            while True:
                items = admin.list(GROUP, VERSION, ns, PLURAL).items
                synced = sum(1 for o in items if (o.get("status") or {}).get("phase"))
                if synced == args.plans:
                    break
                if proc.poll() is not None:
                    raise SystemExit(f"operator exited:\n{(work / 'operator.log').read_text()}")
                time.sleep(0.5)
            print(f"first status on all {args.plans} plans after "
                  f"{time.perf_counter() - started:.1f} s")

            cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
            time.sleep(args.steady)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
            print(f"steady state over {args.steady:g} s: CPU {100 * cpu:.1f} % of one core, "
                  f"RSS {rss_mib(proc.pid):.0f} MiB, threads "
                  f"{len(os.listdir(f'/proc/{proc.pid}/task'))}")

            gets, latencies = [], []
            for i, name in enumerate(names[:: max(1, args.plans // args.sample)]):
                t = time.perf_counter()
                admin.get(GROUP, VERSION, ns, PLURAL, name)
                gets.append(time.perf_counter() - t)
                t = time.perf_counter()
                obj = admin.patch(GROUP, VERSION, ns, PLURAL, name,
                                  {"spec": {"steps": [{"name": "redirect", "action": "traffic",
                                                       "backend": "edge", "target": "1h",
                                                       "description": f"edit {i}"}]}})
                want = obj["metadata"]["generation"]
                while (admin.get(GROUP, VERSION, ns, PLURAL, name).get("status") or {}).get(
                        "observedGeneration") != want:
                    time.sleep(0.005)
                latencies.append(time.perf_counter() - t)
            base = statistics.median(gets)
            p50, p99 = pct(latencies, 0.5), pct(latencies, 0.99)
            print(f"reconcile latency (spec edit -> status.observedGeneration), "
                  f"{len(latencies)} plans: p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms")
            print(f"baseline bare GET p50 {1000 * base:.1f} ms; ratio p50/GET "
                  f"{p50 / base:.0f}x")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

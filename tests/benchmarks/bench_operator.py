"""Benchmark: one operator replica watching many FailoverPlans on a real kube-apiserver.

    .venv/bin/python tests/benchmarks/bench_operator.py [--plans 1000] [--sample 100]
                                                        [--steady 30] [--profile]

Quiet plans (one memory probe every 30 s) plus one plan that trips (`trip`: an HTTP
probe of a server this benchmark runs in a process of its own, `trip_service.py`, every
200 ms, 3 failures, no dwell). Two clients
run in turn against the same API server and the same plans, each measured the same way:

- **baseline**, a bare client doing the least any operator must do for these plans: list
  them, write one status per plan (one PUT each, 4 at a time like the operator's
  workers), then hold a watch, answer each
  generation change with one status write, and renew a Lease every 2 s — no probes, no
  policy, no journal. Its figures are the floor the machinery around the work is
  compared with; the API server's own CPU in each steady window is printed too.
- **operator**, `failoverctl operator` (tick 1 s), run under `cpu_profile.py`, whose
  sampler reads every thread's own CPU clock.

Figures: time until every plan has a first status (seen on a watch started with the
client, never by listing every plan while it works); steady-state CPU of the process (from
its CPU time in /proc, not wall time, so the engineers sharing the machine do not move
it), RSS; reconcile latency of a status change (a spec edit until the status reports the
generation, seen on a watch) p50/p99 over `--sample` plans; isolation: while the others
are quiet, the trip plan's HTTP server answers 503 and the time until its first step
starts (`status.run.steps[0].startedAt`) is compared with its detection floor
(interval x consecutive failures) + 100 ms. With `--profile` (always for 5,000 plans or
more) the operator's CPU in the steady state and while the status changes are measured
(with `--profile-start` also until the first statuses) is broken down by what it was
doing and in which layer, with its garbage collections and where its workers waited.
Each goal of issue 20 prints met / NOT met, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller.crd import GROUP, PLURAL, VERSION  # noqa: E402
from controller.drill.servers.base import free_port  # noqa: E402
from controller.drill.servers.kube import KubeServers  # noqa: E402
from controller.kube import Gone, Kube, KubeConnection, connect  # noqa: E402

TRIP, TRIP_INTERVAL, TRIP_FAILURES = "trip", 0.2, 3
GOALS = {"cpu": 10.0, "rss": 150.0, "first": 10.0, "p99": 0.100, "isolation": 0.100}


def quiet_plan(name: str) -> dict[str, Any]:
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


def trip_plan(url: str) -> dict[str, Any]:
    body = quiet_plan(TRIP)
    body["spec"]["services"] = [{"name": "web", "core": True,
                                 "interval": f"{1000 * TRIP_INTERVAL:.0f}ms",
                                 "timeout": "150ms", "probes": [{"kind": "http", "options": {
                                     "url": url, "expectStatus": [200]}}]}]
    body["spec"]["trigger"] = {"consecutiveFailures": TRIP_FAILURES, "dwell": "0s",
                               "window": "10s", "cooldown": "1h"}
    body["spec"]["steps"][0]["params"] = {"to": "dc-b", "weights": {"dc-b": 100, "dc-a": 0}}
    return body


@contextmanager
def trip_service(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The trip plan's HTTP service (`trip_service.py`) in its own process, answering once
    this returns; SIGUSR1 makes it answer 503. Not a thread of this process, which parses
    every plan's watch events meanwhile: its probes would wait for our GIL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/benchmarks/trip_service.py"),
                             str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the trip service on port {port} did not start") from None
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait()


# --- measuring a process -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Figures:
    first: float = float("nan")  # s until every plan had a first status
    writes: float = float("nan")  # API write requests per plan until then
    first_cpu: float = float("nan")  # % of one core until then: the client
    first_servers_cpu: float = float("nan")  # and kube-apiserver + etcd
    cpu: float = float("nan")  # % of one core, steady state
    rss: float = float("nan")  # MiB
    threads: int = 0
    apiserver_cpu: float = float("nan")  # % of one core, during the steady window
    p50: float = float("nan")
    p99: float = float("nan")
    isolation: float = float("nan")  # s from the fault to the trip plan's first step
    false_trip: str | None = None  # the trip plan tripped with its service up
    profile: dict[str, Any] = field(default_factory=dict)  # steady state
    first_profile: dict[str, Any] = field(default_factory=dict)  # until the first statuses
    latency_profile: dict[str, Any] = field(default_factory=dict)  # the status changes


# --- the bare client (the baseline), run as `bench_operator.py --bare ...` -----------------------


def bare(kubeconfig: str, namespace: str) -> None:
    """List, one status write per plan, then watch + a status write per generation change,
    and a Lease renewed every 2 s."""
    kube = connect(KubeConnection(kubeconfig=kubeconfig))

    def write(obj: dict[str, Any]) -> None:
        gen = obj["metadata"].get("generation")
        if (obj.get("status") or {}).get("observedGeneration") != gen:
            kube.replace_status(GROUP, VERSION, namespace, PLURAL,
                                {**obj, "status": {"observedGeneration": gen}})

    def lease() -> None:
        while True:
            kube.acquire_lease(namespace, "bench-bare", holder="bare", duration_seconds=15)
            time.sleep(2)

    threading.Thread(target=lease, daemon=True).start()
    listed = kube.list(GROUP, VERSION, namespace, PLURAL)
    with ThreadPoolExecutor(4) as pool:  # as many as the operator's workers
        list(pool.map(write, listed.items))
    rv = listed.resource_version
    while True:
        for event in kube.watch(GROUP, VERSION, namespace, PLURAL, resource_version=rv,
                                timeout_seconds=5):
            rv = event.resource_version or rv
            if event.type == "MODIFIED":
                write(event.object)


# --- one client against the plans ---------------------------------------------------------------


_WRITES = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def api_writes(kube: KubeServers) -> Counter[str]:
    """The API server's count of write requests so far, by verb and resource
    (`apiserver_request_total`, every client's: read while one client runs)."""
    code, text = kube.request("GET", "/metrics")
    assert code == 200, (code, str(text)[:200])
    out: Counter[str] = Counter()
    for line in str(text).splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("verb") in _WRITES:
            what = labels.get("resource", "") + (f"/{labels['subresource']}"
                                                 if labels.get("subresource") else "")
            out[f"{labels['verb']} {what}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def satisfied(items: list[dict[str, Any]], has: Callable[[dict[str, Any]], bool]) -> set[str]:
    return {o["metadata"]["name"] for o in items if has(o.get("status") or {})}


def first_statuses(admin: Kube, ns: str, n: int, proc: subprocess.Popen[bytes],
                   has: Callable[[dict[str, Any]], bool], started: float,
                   seen: set[str], rv: str, log: Path) -> float:
    """Seconds from `started` until `n` plans have a status satisfying `has`: `seen`
    already did at `rv` (listed before the client started), the rest are counted from a
    watch from `rv` — not by listing every plan again and again, which loads the API
    server and this machine while the client under test works (a relist only when the
    watch's resourceVersion expires)."""
    done = set(seen)
    while len(done) < n:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited:\n{log.read_text()[-5000:]}")
        try:
            for event in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                     timeout_seconds=2):
                rv = event.resource_version or rv
                if event.type in ("ADDED", "MODIFIED") and has(event.object.get("status")
                                                               or {}):
                    done.add(event.object["metadata"]["name"])
                    if len(done) >= n:
                        break
        except Gone:
            listed = admin.list(GROUP, VERSION, ns, PLURAL)
            done |= satisfied(listed.items, has)
            rv = listed.resource_version
    return time.perf_counter() - started


def watch_until(admin: Kube, ns: str, name: str, rv: str,
                done: Callable[[dict[str, Any]], bool], limit: float = 60.0) -> float:
    """time.perf_counter() when a change of `name` after `rv` satisfies `done`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for event in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                 timeout_seconds=10, bookmarks=False,
                                 field_selector=f"metadata.name={name}"):
            rv = event.resource_version or rv
            if done(event.object.get("status") or {}):
                return time.perf_counter()
    raise SystemExit(f"{name}: not done within {limit:g} s")


def latencies(admin: Kube, ns: str, names: list[str], tag: str) -> list[float]:
    out = []
    for i, name in enumerate(names):
        t = time.perf_counter()
        obj = admin.patch(GROUP, VERSION, ns, PLURAL, name,
                          {"spec": {"steps": [{"name": "redirect", "action": "traffic",
                                               "backend": "edge", "target": "1h",
                                               "description": f"{tag} edit {i}"}]}})
        want = obj["metadata"]["generation"]
        seen = watch_until(admin, ns, name, obj["metadata"]["resourceVersion"],
                           lambda s, want=want: s.get("observedGeneration") == want)
        out.append(seen - t)
    return out


def isolation(admin: Kube, ns: str, service: subprocess.Popen[bytes]) -> float | str:
    """Seconds from the trip plan's service failing until its first step started; or
    what happened when it tripped before its service failed (its probes answered late
    while the others were busy: a false trip, a failed isolation)."""
    obj = admin.get(GROUP, VERSION, ns, PLURAL, TRIP)
    status = obj.get("status") or {}
    if status.get("phase") != "Healthy":
        return (f"the trip plan was {status.get('phase')} before its service failed: "
                f"{(status.get('run') or {}).get('cause') or status.get('lastDecision')}")
    fault = time.time()
    service.send_signal(signal.SIGUSR1)
    watch_until(admin, ns, TRIP, obj["metadata"]["resourceVersion"],
                lambda s: bool(((s.get("run") or {}).get("steps") or [{}])[0].get("startedAt")))
    step = admin.get(GROUP, VERSION, ns, PLURAL, TRIP)["status"]["run"]["steps"][0]
    return float(step["startedAt"]) - fault


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "FAILOVER_TICK": "1"})
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_profile(proc: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    """The profile of the window so far (`cpu_profile.py` writes it on SIGUSR2)."""
    path.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR2)
    for _ in range(50):
        if path.exists():
            break
        time.sleep(0.1)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def measure(kube: KubeServers, argv: list[str], work: Path, names: list[str], *,
            has: Callable[[dict[str, Any]], bool], steady: float, sample: int,
            tag: str, service: subprocess.Popen[bytes] | None = None,
            profile: Path | None = None, from_start: bool = False) -> Figures:
    admin, ns, fig = kube.kube("admin"), kube.namespace, Figures()
    api = kube.pid("kube-apiserver")
    assert api is not None
    log = work / f"{tag}.log"
    servers = [pid for pid in (api, kube.pid("etcd")) if pid is not None]
    listed = admin.list(GROUP, VERSION, ns, PLURAL)
    seen, listed_rv = satisfied(listed.items, has), listed.resource_version
    del listed  # the watch goes on from its resourceVersion; its objects go now
    writes0, started = api_writes(kube), time.perf_counter()
    servers0 = sum(cpu_seconds(pid) for pid in servers)
    with running(argv, log) as proc:
        fig.first = first_statuses(admin, ns, len(names), proc, has, started, seen,
                                   listed_rv, log)
        fig.first_cpu = 100 * cpu_seconds(proc.pid) / fig.first
        fig.first_servers_cpu = 100 * (sum(cpu_seconds(pid) for pid in servers)
                                       - servers0) / fig.first
        writes = api_writes(kube) - writes0
        fig.writes = writes.total() / len(names)
        print(f"  {tag}: first status on all {len(names)} plans after {fig.first:.1f} s; "
              f"{fig.writes:.2f} API writes per plan meanwhile ("
              + ", ".join(f"{what} {n}" for what, n in writes.most_common()) + ")",
              flush=True)
        if profile is not None and from_start:
            fig.first_profile = read_profile(proc, profile)
        time.sleep(min(5.0, steady))  # the burst of the first statuses is over
        if profile is not None:
            proc.send_signal(signal.SIGUSR1)
        cpu0, api0, wall0 = cpu_seconds(proc.pid), cpu_seconds(api), time.perf_counter()
        time.sleep(steady)
        wall = time.perf_counter() - wall0
        fig.cpu = 100 * (cpu_seconds(proc.pid) - cpu0) / wall
        fig.apiserver_cpu = 100 * (cpu_seconds(api) - api0) / wall
        fig.rss, fig.threads = rss_mib(proc.pid), len(os.listdir(f"/proc/{proc.pid}/task"))
        if profile is not None:
            fig.profile = read_profile(proc, profile)
            fig.cpu -= 100 * fig.profile["sampler_cpu"] / wall  # the sampler's own, not ours
        print(f"  {tag}: steady {fig.cpu:.1f} % CPU, RSS {fig.rss:.0f} MiB", flush=True)
        if profile is not None:
            proc.send_signal(signal.SIGUSR1)
        lat = latencies(admin, ns, names[:: max(1, len(names) // sample)][:sample], tag)
        if profile is not None:
            fig.latency_profile = read_profile(proc, profile)
        fig.p50, fig.p99 = pct(lat, 0.5), pct(lat, 0.99)
        if service is not None:
            found = isolation(admin, ns, service)
            if isinstance(found, str):
                fig.false_trip = found
            else:
                fig.isolation = found
    return fig


# --- the report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(n: int, base: Figures, op: Figures, steady: float) -> None:
    floor = TRIP_INTERVAL * TRIP_FAILURES
    rows = [
        ("first status on every plan", f"{base.first:.1f} s", f"{op.first:.1f} s"),
        ("API writes per plan until then", f"{base.writes:.2f}", f"{op.writes:.2f}"),
        ("CPU until then (% of one core)", f"{base.first_cpu:.0f} %", f"{op.first_cpu:.0f} %"),
        ("kube-apiserver + etcd CPU until then", f"{base.first_servers_cpu:.0f} %",
         f"{op.first_servers_cpu:.0f} %"),
        (f"steady CPU over {steady:g} s (% of one core)", f"{base.cpu:.1f} %",
         f"{op.cpu:.1f} %"),
        ("kube-apiserver CPU meanwhile", f"{base.apiserver_cpu:.1f} %",
         f"{op.apiserver_cpu:.1f} %"),
        ("RSS", f"{base.rss:.0f} MiB", f"{op.rss:.0f} MiB"),
        ("threads", str(base.threads), str(op.threads)),
        ("status change p50 (edit -> observedGeneration)", f"{1000 * base.p50:.0f} ms",
         f"{1000 * op.p50:.0f} ms"),
        ("status change p99", f"{1000 * base.p99:.0f} ms", f"{1000 * op.p99:.0f} ms"),
    ]
    print(f"\n{n} quiet plans + 1 that trips; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"{'':<50}{'baseline':>12}{'operator':>12}")
    for label, b, o in rows:
        print(f"{label:<50}{b:>12}{o:>12}")
    print(f"p99 / baseline p99: {op.p99 / base.p99:.1f}x; p50 / baseline p50: "
          f"{op.p50 / base.p50:.1f}x")
    if op.false_trip:
        print(f"isolation NOT measured: {op.false_trip}")
    print(f"isolation: the trip plan's first step {1000 * op.isolation:.0f} ms after its "
          f"service failed; floor {1000 * floor:.0f} ms ({TRIP_INTERVAL * 1000:.0f} ms x "
          f"{TRIP_FAILURES})")
    if n == 1000:
        print("goals (issue 20, 1,000 quiet plans):")
        print(f"  steady CPU < {GOALS['cpu']:g} % of one core: {op.cpu:.1f} % "
              f"{verdict(op.cpu < GOALS['cpu'])}")
        print(f"  RSS < {GOALS['rss']:g} MiB: {op.rss:.0f} MiB {verdict(op.rss < GOALS['rss'])}")
        print(f"  first status on every plan < {GOALS['first']:g} s: {op.first:.1f} s "
              f"{verdict(op.first < GOALS['first'])}")
    else:
        print(f"goals (issue 20, {n} plans: measured and printed): met")
    print(f"  status change p99 < {1000 * GOALS['p99']:.0f} ms: {1000 * op.p99:.0f} ms "
          f"{verdict(op.p99 < GOALS['p99'])}")
    print(f"  isolation: first step within floor + {1000 * GOALS['isolation']:.0f} ms "
          f"({1000 * (floor + GOALS['isolation']):.0f} ms): {1000 * op.isolation:.0f} ms "
          f"{verdict(op.isolation <= floor + GOALS['isolation'])}")
    if op.first_profile:
        profile_summary("until every plan had a first status", op.first_profile)
    if op.profile:
        profile_summary("steady state", op.profile, op.cpu)
    if op.latency_profile:
        profile_summary("while the status changes were measured", op.latency_profile)


def profile_summary(window: str, p: dict[str, Any], cpu: float | None = None) -> None:
    total = sum(p["what"].values()) or 1.0
    seconds = p["seconds"]
    measured = "" if cpu is None else f" of {cpu:.1f} % measured"
    print(f"profile of the operator, {window} ({seconds:.0f} s, "
          f"{100 * total / seconds:.1f} % of one core sampled{measured}; the sampler itself "
          f"{100 * p['sampler_cpu'] / seconds:.1f} %):")
    print("  garbage collections: " + "; ".join(
        f"generation {gen} {n:.0f} x, {1000 * total:.0f} ms in all, longest {1000 * longest:.0f} ms"
        for gen, (n, total, longest) in p.get("gc", {}).items()))
    for title, key in (("  by what it was doing", "what"), ("  by layer", "layer"),
                       ("  top functions (self)", "functions")):
        print(title)
        for label, used in sorted(p[key].items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {100 * used / total:5.1f} %  {label}")
    print("  where the workers waited (wall seconds, all workers)")
    for label, waited in sorted(p.get("waits", {}).items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {waited:7.1f} s  {label}")


def create(admin: Kube, ns: str, bodies: list[dict[str, Any]]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda body: admin.create(GROUP, VERSION, ns, PLURAL, body), bodies))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady state")
    ap.add_argument("--profile", action="store_true",
                    help="break the operator's CPU down (always with 5,000 plans or more)")
    ap.add_argument("--profile-start", action="store_true",
                    help="with --profile, also until the first statuses (its sampler walks "
                         "the stacks of threads that start and end by the thousand then: "
                         "the 10,000-plan run crashed in libpython once with it)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="the operator's figures only (while working on it; goals are "
                         "reported against a baseline)")
    ap.add_argument("--bare", nargs=2, metavar=("KUBECONFIG", "NAMESPACE"),
                    help=argparse.SUPPRESS)  # the baseline client's own process
    args = ap.parse_args()
    if args.bare:
        bare(*args.bare)
        return
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    try:
        with trip_service(port) as service, KubeServers() as kube:
            admin, ns = kube.kube("admin"), kube.namespace
            names = [f"plan-{i:05d}" for i in range(args.plans)]
            t = time.perf_counter()
            create(admin, ns, [quiet_plan(n) for n in names]
                   + [trip_plan(f"http://127.0.0.1:{port}/health")])
            print(f"created {args.plans} + 1 FailoverPlans in {time.perf_counter() - t:.1f} s",
                  flush=True)
            config = str(kube.kubeconfig("controller"))
            base = Figures() if args.no_baseline else measure(
                kube, [sys.executable, __file__, "--bare", config, ns], work, [*names, TRIP],
                has=lambda s: "observedGeneration" in s, steady=args.steady,
                sample=args.sample, tag="baseline")
            profile = work / "profile.json" if args.profile or args.plans >= 5000 else None
            op = measure(kube, [sys.executable, str(ROOT / "tests/benchmarks/cpu_profile.py"),
                                *(["--from-start"] if args.profile_start else []),
                                str(work / "profile.json"), "--journal", str(work / "j.db"),
                                "operator", "--namespace", ns, "--kubeconfig", config,
                                "--identity", "bench"],
                         work, [*names, TRIP], has=lambda s: bool(s.get("phase")),
                         steady=args.steady, sample=args.sample, tag="operator",
                         service=service, profile=profile, from_start=args.profile_start)
            report(args.plans, base, op, args.steady)
            problems = [line for line in (work / "operator.log").read_text().splitlines()
                        if " WARNING " in line or " ERROR " in line or "Traceback" in line]
            print(f"operator log: {len(problems)} warnings and errors"
                  + "".join(f"\n  {line[:300]}" for line in problems[:10]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

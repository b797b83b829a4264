"""Name lookups never starve the probes: one name whose nameserver never answers must not
make every other probe time out (issue 21, item 7).

The starvation is a property of the process-wide resolver, so the main test reproduces the
real configuration: a child process whose `/etc/resolv.conf` (bind-mounted in a private
mount namespace, `unshare --mount`; root only, as the project's test machine is) points at
a real UDP DNS server started here. That server answers `up.probe.test` and reads and drops
every query for `hang.probe.test`. The child runs the real `ProbeScheduler` with HTTP and
TCP probes of the hanging name next to healthy HTTP and TCP probes of `localhost` (from
/etc/hosts) and `up.probe.test` (from DNS) for 12 s; every healthy sample must pass.

Before the fix the lookups ran `getaddrinfo` on the loop's default executor (6 threads on
2 cores): each timed-out probe left its thread blocked for the resolver's 2 x 5 s, and
after a few seconds the healthy probes timed out waiting for a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import registry
from controller.probes.resolve import ProbeResolver
from controller.secrets import Secrets
from tests.contract.probes.conftest import DnsServer, HttpBackend

ROOT = Path(__file__).resolve().parents[3]

CHILD = r'''
import asyncio, json, sys, time
from controller import registry
from controller.probes.scheduler import ProbeScheduler, Target
from controller.secrets import Secrets

port, seconds = int(sys.argv[1]), float(sys.argv[2])
def probe(service, kind, options):
    return registry.build("probe", kind, options, secrets=Secrets(), service=service)
specs = {
    # one name that never resolves, probed by three services
    "hang-web": ("http", {"url": f"http://hang.probe.test:{port}/ok"}),
    "hang-lb": ("tcp", {"host": "hang.probe.test", "port": port}),
    "hang-db": ("tcp", {"host": "hang.probe.test", "port": port}),
    # healthy ones: /etc/hosts and DNS names
    "web": ("http", {"url": f"http://localhost:{port}/ok", "bodyMatch": "service ok"}),
    "api": ("http", {"url": f"http://up.probe.test:{port}/ok"}),
    "lb": ("tcp", {"host": "localhost", "port": port}),
    "db": ("tcp", {"host": "up.probe.test", "port": port}),
}
targets = [Target(name, [probe(name, kind, opts)], interval=0.5, timeout=1.0)
           for name, (kind, opts) in specs.items()]
t0 = time.monotonic()
samples = []
sink = lambda s: samples.append((round(time.monotonic() - t0, 2), s.service, s.ok, s.detail))
async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await ProbeScheduler(targets, sink).run(stop)
asyncio.run(main())
print(json.dumps(samples))
'''


@pytest.fixture
def silent_nameserver() -> Iterator[DnsServer]:
    """A DNS server on port 53 of a random loopback address (resolv.conf has no port)."""
    last: OSError | None = None
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            server = DnsServer({("up.probe.test", "A"): ["127.0.0.1"]}, host=host, port=53,
                               drop=("hang.probe.test",))
        except OSError as exc:
            last = exc
            continue
        yield server
        server.close()
        return
    raise AssertionError(f"no free loopback address for a DNS server on port 53: {last}")


def run_child_with_resolv_conf(tmp_path: Path, nameserver: str, port: int,
                               seconds: float) -> list[list[Any]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise AssertionError("this test gives a child process its own /etc/resolv.conf with "
                             "`unshare --mount`; run the suite as root (as scripts/setup "
                             "sets the machine up) with util-linux installed")
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {nameserver}\noptions timeout:5 attempts:2\n")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    shell = (f"mount --bind {conf} /etc/resolv.conf && "
             f"exec {sys.executable} {script} {port} {seconds}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                          capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples: list[list[Any]] = json.loads(proc.stdout)  # [seconds, service, ok, detail]
    return samples


def test_an_unanswered_lookup_never_starves_the_healthy_probes(
        tmp_path: Path, silent_nameserver: DnsServer, http_backend: HttpBackend) -> None:
    ns = silent_nameserver
    samples = run_child_with_resolv_conf(tmp_path, ns.host, http_backend.port, seconds=12)
    healthy = [s for s in samples if not s[1].startswith("hang-")]
    hanging = [s for s in samples if s[1].startswith("hang-")]
    # the hanging name really was asked for and never answered ...
    assert ns.dropped > 0 and hanging and not any(ok for _, _, ok, _ in hanging)
    why = ("timed out after 1 s", "hang.probe.test: no answer from the nameservers")
    assert all(any(w in detail for w in why) for *_, detail in hanging), hanging[:3]
    # ... and every healthy probe kept passing for the whole 12 s
    failed = [s for s in healthy if not s[2]]
    assert not failed, f"{len(failed)} of {len(healthy)} healthy samples failed: {failed[:5]}"
    for name in ("web", "api", "lb", "db"):
        times = [t for t, service, _, _ in healthy if service == name]
        assert len(times) >= 20 and max(times) > 10, (name, times)


# --- the resolver itself, against a real DNS server on a free port ------------------------


def test_resolver_reads_hosts_then_dns_with_the_search_list(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                     "192.0.2.7  pinned.example.test pinned  # trailing comment\n")
    server = DnsServer({("www.example.test", "A"): ["192.0.2.10"],
                        ("api.corp.test", "A"): ["192.0.2.20"],
                        ("api.corp.test", "AAAA"): ["2001:db8::20"]},
                       drop=("hang.example.test",))
    resolver = ProbeResolver(nameservers=["127.0.0.1"], port=server.port, search=["corp.test"],
                             hosts_file=str(hosts), lifetime=1.0)

    async def run() -> dict[str, Any]:
        got: dict[str, Any] = {}
        for name in ("localhost", "PINNED", "www.example.test", "api", "192.0.2.99", "::1"):
            got[name] = [(r["host"], r["port"]) for r in await resolver.resolve(name, 80, 0)]
        got["v4-only"] = [r["host"] for r in await resolver.resolve("api", 80, socket.AF_INET)]
        for name in ("missing.example.test", "hang.example.test"):
            try:
                await resolver.resolve(name, 80, 0)
            except OSError as exc:
                got[name] = exc.strerror
        return got

    try:
        start = time.monotonic()
        got = asyncio.run(asyncio.wait_for(run(), 30))
        took = time.monotonic() - start
    finally:
        server.close()
    assert got["localhost"] == [("127.0.0.1", 80), ("::1", 80)]
    assert got["PINNED"] == [("192.0.2.7", 80)]
    assert got["www.example.test"] == [("192.0.2.10", 80)]
    assert got["api"] == [("192.0.2.20", 80), ("2001:db8::20", 80)]  # via the search list
    assert got["192.0.2.99"] == [("192.0.2.99", 80)] and got["::1"] == [("::1", 80)]
    assert got["v4-only"] == ["192.0.2.20"]
    assert got["missing.example.test"] == "missing.example.test: name does not exist"
    assert got["hang.example.test"] == ("hang.example.test: no answer from the nameservers "
                                        "within 1 s")
    assert took < 10


def test_a_cancelled_lookup_leaves_nothing_behind_and_others_go_on(tmp_path: Path) -> None:
    """The probe's timeout cancels the lookup itself: no thread, no socket stays busy."""
    server = DnsServer({("www.example.test", "A"): ["192.0.2.10"]}, drop=("hang.example.test",))
    resolver = ProbeResolver(nameservers=["127.0.0.1"], port=server.port,
                             hosts_file=str(tmp_path / "none"))
    threads_before = threading.active_count()

    async def run() -> list[str]:
        for _ in range(50):  # fifty probes of the dead name, each cut by its timeout
            try:
                async with asyncio.timeout(0.05):
                    await resolver.resolve("hang.example.test", 80, 0)
            except TimeoutError:
                pass
        answers = await asyncio.gather(*(resolver.resolve("www.example.test", 80, 0)
                                         for _ in range(20)))
        return [a[0]["host"] for a in answers]

    try:
        hosts = asyncio.run(asyncio.wait_for(run(), 20))
    finally:
        server.close()
    assert hosts == ["192.0.2.10"] * 20
    assert server.dropped >= 50
    assert threading.active_count() <= threads_before


def test_http_and_tcp_probes_report_an_unknown_name(tmp_path: Path) -> None:
    server = DnsServer({("www.example.test", "A"): ["192.0.2.10"]})
    resolver = ProbeResolver(nameservers=["127.0.0.1"], port=server.port,
                             hosts_file=str(tmp_path / "none"))
    http = registry.build("probe", "http", {"url": "http://nope.example.test/", "timeout": "3s"},
                          secrets=Secrets(), service="web")
    tcp = registry.build("probe", "tcp", {"host": "nope.example.test", "port": 80,
                                          "timeout": "3s"}, secrets=Secrets(), service="lb")
    http.use_resolver(resolver)
    tcp.use_resolver(resolver)

    async def run() -> Any:
        try:
            return await asyncio.gather(http.check(), tcp.check())
        finally:
            await http.aclose()

    try:
        h, t = asyncio.run(run())
    finally:
        server.close()
    assert not h.ok and "cannot resolve host: nope.example.test: name does not exist" in h.detail
    assert not t.ok and "cannot resolve host: nope.example.test: name does not exist" in t.detail


def test_the_scheduler_hands_its_resolver_to_every_probe(tmp_path: Path,
                                                        http_backend: HttpBackend) -> None:
    """HTTP (shared session) and TCP probes of a name only the given nameserver knows."""
    from controller.probes.scheduler import ProbeScheduler, Target

    server = DnsServer({("shop.example.test", "A"): ["127.0.0.1"]})
    resolver = ProbeResolver(nameservers=["127.0.0.1"], port=server.port,
                             hosts_file=str(tmp_path / "none"))
    web = registry.build("probe", "http",
                         {"url": f"http://shop.example.test:{http_backend.port}/ok"},
                         secrets=Secrets(), service="web")
    lb = registry.build("probe", "tcp", {"host": "shop.example.test",
                                         "port": http_backend.port},
                        secrets=Secrets(), service="lb")
    sched = ProbeScheduler([Target("web", [web], 1.0, 2.0), Target("lb", [lb], 1.0, 2.0)],
                           resolver=resolver)
    try:
        samples = asyncio.run(sched.run_once())
    finally:
        server.close()
    assert [s.ok for s in samples] == [True, True], [s.detail for s in samples]
    assert server.queries >= 2

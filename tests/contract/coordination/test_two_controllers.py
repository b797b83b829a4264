"""Two controllers on two hosts (issue 14): two `Engine`s with their own journal files and
holders, coordinated only by one real etcd, driven concurrently in threads against one
world (the in-memory fakes sharing a `stateFile`).

The failover runs exactly once: every write to the world carries host-a's holder and its
etcd fencing token, host-b — ticking the whole time against the same failing probes —
never records or performs a step while host-a holds the etcd lease, and that lease holds
through a traffic step longer than its TTL because it is renewed during the step. When
host-a exits, host-b takes the lease at once, with a larger token.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import coordination, testing
from controller.backends import Backends
from controller.coordination.etcd import EtcdCoordinator
from controller.drill.servers.etcd import EtcdServer
from controller.journal import Journal
from controller.loop import Engine
from controller.model import Phase, StepRecord, StepStatus
from controller.plan import FailoverPlan, parse_plan
from controller.probing import probe_once

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "manifests/examples/memory-drill.yaml"
TTL = 2.0  # seconds: the engine renews every TTL/3, during steps too
TRAFFIC_DELAY = 3.0  # the traffic step outlasts the lease's TTL


def plan_for(name: str, state: Path, etcd_url: str) -> FailoverPlan:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    for backend in data["spec"]["backends"]:
        backend["options"]["stateFile"] = str(state)
    for service in data["spec"]["services"]:
        for probe in service["probes"]:
            probe["options"]["stateFile"] = str(state)
    edge = next(b for b in data["spec"]["backends"] if b["name"] == "edge")
    edge["options"]["delay"] = TRAFFIC_DELAY
    data["spec"]["coordination"] = {"kind": "etcd", "options": {
        "endpoints": [etcd_url], "prefix": "/failover/plans/"}}
    data["metadata"] = {"name": name}
    return parse_plan(data)


class RecordingJournal(Journal):
    """A journal that notes each step record its controller saves: (time, step, status)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.saved: list[tuple[float, str, StepStatus]] = []

    def save_step(self, rec: StepRecord, **kwargs: Any) -> None:
        super().save_step(rec, **kwargs)
        self.saved.append((time.monotonic(), rec.name, rec.status))


@dataclass
class Host:
    """One controller host: its journal, its engine and the thread that ticks it."""

    name: str
    plan: FailoverPlan
    journal: RecordingJournal
    engine: Engine
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Host:
        def loop() -> None:
            try:
                while not self.stop.is_set():
                    self.engine.tick(probe_once(self.plan, self.engine.backends))
                    self.stop.wait(0.05)
            except BaseException as exc:  # reported by the test, never swallowed
                self.errors.append(exc)

        self.thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)
            assert not self.thread.is_alive(), f"{self.name} did not stop"
        assert not self.errors, f"{self.name} failed: {self.errors!r}"


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for h in started:
        h.stop.set()
    for h in started:
        if h.thread is not None:
            h.thread.join(60)
        h.journal.close()


def until(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Wait for a condition (a bound against a hang, not an assertion about time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_controllers_on_two_journals_fail_over_exactly_once(
        etcd: EtcdServer, plan: str, tmp_path: Path, hosts: list[Host]) -> None:
    state = tmp_path / "world.json"

    def host(name: str) -> Host:
        p = plan_for(plan, state, etcd.url)
        journal = RecordingJournal(tmp_path / f"{name}.db")  # its own journal file
        engine = Engine(p, journal, backends=Backends(p), holder=name, lease_ttl=TTL,
                        backoff=0.01, coordinator=coordination.for_plan(p))
        hosts.append(Host(name, p, journal, engine))
        return hosts[-1]

    a, b = host("host-a"), host("host-b")
    observer = coordination.for_plan(a.plan)
    assert isinstance(observer, EtcdCoordinator)
    a.start()
    first = until("host-a holds the plan in etcd", observer.holder)
    assert first[0] == "host-a"
    b.start()  # from now on both tick, every 50 ms, against the same probes
    testing.set_health("dc-a", False, state_file=str(state))

    # watch etcd while the run goes on: host-a holds the key all along, the same token,
    # through the traffic step that outlasts the TTL
    seen: set[tuple[str, int] | None] = set()

    def failed_over() -> bool:
        seen.add(observer.holder())
        st = a.journal.plan_state(plan)
        return st is not None and st.phase is Phase.FAILED_OVER

    until("host-a failed over", failed_over, timeout=60)
    assert seen == {first}, f"the etcd lease changed hands during the run: {seen}"
    token = first[1]

    # --- exactly once, by host-a under its etcd token --------------------------------------
    runs = a.journal.runs(plan)
    assert [(r.kind, r.phase) for r in runs] == [("failover", Phase.FAILED_OVER)]
    steps = a.journal.steps(runs[0].id)
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        (name, StepStatus.SUCCEEDED, 1)
        for name in ("notify-incident", "redirect-traffic", "dns-cutover", "link-test")]
    edge = testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
        key="edge", state_file=str(state)))
    zone = testing.FakeDnsProvider(testing.FakeDnsProvider.Options(
        key="zone", state_file=str(state)))
    writes = edge.writes() + zone.writes()
    assert writes, "the failover changed nothing"
    assert {(w["holder"], w["token"]) for w in writes} == {("host-a", token)}, writes
    assert edge.current() == {"dc-a": 0, "dc-b": 100}
    im = testing.FakeNotifier(testing.FakeNotifier.Options(key="im", state_file=str(state)))
    assert {m["run"] for m in im.sent()} == {runs[0].id}

    # --- host-b never acted: no run, no step record, nothing written ------------------------
    assert b.journal.runs(plan) == [] and b.journal.saved == []
    started, finished = a.journal.saved[0][0], a.journal.saved[-1][0]
    traffic = [at for at, name, _ in a.journal.saved if name == "redirect-traffic"]
    assert traffic[-1] - traffic[0] >= TRAFFIC_DELAY > TTL  # renewed during the long step
    assert finished > started

    # --- host-a exits: host-b takes over at once with a larger token, acts on nothing ------
    a.halt()
    a.engine.release()
    second = until("host-b holds the plan", lambda: (h := observer.holder())
                   and h[0] == "host-b" and h, timeout=10)
    assert second[1] > token
    time.sleep(1.0)  # host-b keeps ticking; the service is up behind dc-b
    b.halt()
    assert b.journal.runs(plan) == [] and b.journal.saved == []
    assert edge.writes() + zone.writes() == writes
    b.engine.release()
    assert observer.holder() is None

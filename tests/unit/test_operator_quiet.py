"""What a quiet plan costs the operator (issue 20), over the in-memory API server: a cycle
that changed nothing writes nothing to the journal, a settled plan's due reconciles skip
the engine until a sample, a request or a change arrives, and a plan's first cycle writes
its status once, and no Event when it is healthy; a change never waits in the work queue
behind quiet plans' due ticks. The figures at scale: tests/benchmarks/bench_operator.py."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.annotations import A_BY, A_REQUEST
from controller.backends import Backends
from controller.crd import GROUP, PLURAL, VERSION
from controller.journal import Journal
from controller.loop import Engine
from controller.model import Sample
from controller.operator import Operator, Parts
from controller.plan import FailoverPlan, parse_plan
from controller.testing_kube import FakeKube
from controller.workqueue import WorkQueue

NS = "failover"


def body(name: str) -> dict[str, Any]:
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


class Fed:
    """A plan's samples as the test hands them in."""

    def __init__(self) -> None:
        self.waiting: list[Sample] = []

    @property
    def pending(self) -> bool:
        return bool(self.waiting)

    def drain(self) -> list[Sample]:
        out, self.waiting = self.waiting, []
        return out


class FedProbing:
    def __init__(self) -> None:
        self.fed: dict[str, Fed] = {}

    def start(self, plan: FailoverPlan, backends: Backends) -> Fed:
        return self.fed.setdefault(plan.name, Fed())

    def stop(self, samples: Fed) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def operator(kube: FakeKube, journal: Journal, probing: FedProbing) -> Operator:
    op = Operator(kube, namespace=NS, journal=journal, identity="r1",
                  parts=Parts(probing=probing))
    assert op.elector.round()
    return op


def watched(op: Operator, kube: FakeKube) -> None:
    """What the watch would hold: the plans as the API server has them now."""
    op._objects = {o["metadata"]["name"]: o
                   for o in kube.list(GROUP, VERSION, NS, PLURAL).items}


def test_a_cycle_that_changed_nothing_writes_nothing(journal: Journal) -> None:
    plan = parse_plan(body("quiet"))
    engine = Engine(plan, journal, holder="t")
    engine.tick([Sample("api", True, time.time())])
    changes: list[str] = []
    journal.listeners.append(changes.append)
    before = journal.plan_state("quiet")
    for _ in range(3):
        engine.tick([])
    assert changes == []  # no write, so no status to build either
    assert journal.plan_state("quiet") == before


def test_a_settled_plan_skips_its_cycles_until_something_arrives(
        kube: FakeKube, journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    probing = FedProbing()
    op = operator(kube, journal, probing)
    kube.create(GROUP, VERSION, NS, PLURAL, body("quiet"))
    watched(op, kube)
    probing.fed.setdefault("quiet", Fed()).waiting.append(Sample("api", True, time.time()))
    op.reconcile("quiet")
    cycles: list[int] = []
    tick = Engine.tick
    monkeypatch.setattr(Engine, "tick", lambda self, samples: (
        cycles.append(len(samples)), tick(self, samples))[1])

    op.reconcile("quiet")
    op.reconcile("quiet")
    assert cycles == []  # settled, nothing new: skipped

    probing.fed["quiet"].waiting.append(Sample("api", True, time.time()))
    op.reconcile("quiet")
    assert cycles == [1]  # a sample: a cycle
    op.reconcile("quiet")
    assert cycles == [1]

    def request(obj: dict[str, Any]) -> None:
        obj["metadata"]["annotations"] = {A_REQUEST: "failover", A_BY: "alice"}

    kube.update(GROUP, VERSION, NS, PLURAL, "quiet", request)
    watched(op, kube)
    op.reconcile("quiet")
    assert cycles == [1, 0]  # a request: a cycle, and the request taken
    assert journal.runs("quiet", limit=1)[0].requested_by == "alice"

    other = probing.fed.setdefault("other", Fed())
    kube.create(GROUP, VERSION, NS, PLURAL, body("other"))
    watched(op, kube)
    other.waiting.append(Sample("api", True, time.time()))
    op.reconcile("other")
    op.reconcile("other")
    other.waiting.append(Sample("api", False, time.time(), detail="down"))
    op.reconcile("other")
    op.reconcile("other")
    assert cycles == [1, 0, 1, 1, 0]  # a failed sample unsettles a plan: every time


def test_a_plans_first_cycle_writes_its_status_once(kube: FakeKube, journal: Journal,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    probing = FedProbing()
    op = operator(kube, journal, probing)
    kube.create(GROUP, VERSION, NS, PLURAL, body("first"))
    watched(op, kube)
    probing.fed.setdefault("first", Fed()).waiting.append(Sample("api", True, time.time()))
    writes: list[dict[str, Any]] = []
    replace_status = kube.replace_status
    monkeypatch.setattr(kube, "replace_status", lambda *a: (
        writes.append(a[-1]["status"]), replace_status(*a))[1])

    op.reconcile("first")

    assert len(writes) == 1
    status = kube.get(GROUP, VERSION, NS, PLURAL, "first")["status"]
    assert status["phase"] == "Healthy" and status["readiness"]  # decision and readiness
    assert kube.cluster.events == []  # healthy from the start: nothing worth an Event


def test_a_change_is_never_queued_behind_quiet_plans_ticks() -> None:
    queue = WorkQueue()
    for i in range(1000):  # the ticker's due plans: routine
        queue.add(f"quiet-{i}", urgent=False)
    queue.add("edited")  # a spec edit seen on the watch
    queue.add("quiet-500")  # a probe's news for a plan already due
    queue.add("quiet-7", urgent=False)  # due again: queued once
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["edited", "quiet-500", "quiet-0"]
    assert len(queue) == 998
    queue.add("quiet-0")  # changed while a worker has it: once more, urgently, when done
    queue.add("quiet-1", urgent=False)
    queue.done("quiet-0")
    assert queue.get(0) == "quiet-0"

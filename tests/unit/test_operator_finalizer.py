"""The operator's finalizer comes with a plan's first run, not with the plan (issue 20): a
plan that never ran costs one write (its status) and is deleted at once, while a run's
first step starts only once the finalizer holds the plan, so a plan whose step may have
changed the world is never deleted without waiting for its run. Over the in-memory API
server; the figures at scale: tests/benchmarks/bench_operator.py."""

from __future__ import annotations

import time

import pytest

from controller.annotations import A_BY, A_REQUEST
from controller.crd import GROUP, PLURAL, VERSION
from controller.journal import Journal
from controller.kube import NotFound
from controller.model import Sample, StepStatus
from controller.operator_deletion import FINALIZER
from controller.testing_kube import FakeKube, Fault
from tests.unit.test_operator_quiet import NS, Fed, FedProbing, body, operator, watched


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def test_a_plan_that_never_ran_is_written_once_and_deleted_at_once(
        kube: FakeKube, journal: Journal) -> None:
    probing = FedProbing()
    op = operator(kube, journal, probing)
    kube.create(GROUP, VERSION, NS, PLURAL, body("quiet"))
    watched(op, kube)
    probing.fed.setdefault("quiet", Fed()).waiting.append(Sample("api", True, time.time()))

    op.reconcile("quiet")

    changes = [kind for _, kind, (_, plural, _, name), _, _ in kube.cluster.log
               if plural == PLURAL and name == "quiet"]
    assert changes == ["ADDED", "MODIFIED"]  # created, then its status: one write
    obj = kube.get(GROUP, VERSION, NS, PLURAL, "quiet")
    assert obj["status"]["phase"] == "Healthy"
    assert FINALIZER not in (obj["metadata"].get("finalizers") or [])
    kube.delete(GROUP, VERSION, NS, PLURAL, "quiet")
    with pytest.raises(NotFound):  # nothing to wait for: gone at once
        kube.get(GROUP, VERSION, NS, PLURAL, "quiet")


def test_a_runs_first_step_starts_only_once_the_finalizer_holds_the_plan(
        kube: FakeKube, journal: Journal) -> None:
    probing = FedProbing()
    op = operator(kube, journal, probing)
    kube.create(GROUP, VERSION, NS, PLURAL, body("held"))
    watched(op, kube)
    probing.fed.setdefault("held", Fed()).waiting.append(Sample("api", True, time.time()))
    op.reconcile("held")
    seen: list[tuple[bool, bool]] = []  # (a step running, the finalizer held) per change

    def check(plan: str) -> None:
        run = journal.active_run(plan) or journal.runs(plan, limit=1)[0]
        running = any(s.status is not StepStatus.PENDING for s in journal.steps(run.id))
        held = FINALIZER in (kube.get(GROUP, VERSION, NS, PLURAL, plan)["metadata"]
                             .get("finalizers") or [])
        seen.append((running, held))

    kube.update(GROUP, VERSION, NS, PLURAL, "held", lambda o: o["metadata"].update(
        annotations={A_REQUEST: "failover", A_BY: "alice"}))
    watched(op, kube)
    # the API server refuses the first few writes that place the finalizer: the run's
    # step must wait for it
    fault = Fault("replace", name="held", times=4, when=lambda obj: obj is not None and (
        FINALIZER in (obj["metadata"].get("finalizers") or [])))
    kube.cluster.inject(fault)
    journal.listeners.append(check)
    deadline = time.monotonic() + 60
    while not any(running for running, _ in seen) and time.monotonic() < deadline:
        op.reconcile("held")
        watched(op, kube)

    assert fault.hits == 4
    assert any(running for running, _ in seen), seen  # the step started in the end
    assert not any(running and not held for running, held in seen), seen
    assert any(not held for _, held in seen)  # it did wait for the finalizer

"""One actor, exactly once (issue 14), at the engine with the in-memory fakes: steps that
stop when they must, the lease held through a long step, superseded runs, protection
re-armed after a failback, requests that do not fit the phase, frozen revert definitions.

These use real threads and real (short) time where the property is about concurrency;
the deterministic simulation in tests/reliability/test_simulation.py explores schedules.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import registry, testing
from controller.backends import Backends
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Evidence, Phase, Sample, StepStatus
from controller.plan import FailoverPlan, Step, parse_plan
from controller.steps import Change, StepContext
from controller.steps.traffic import Traffic

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
SERVICES = ("web", "api", "hotline")
ORIGINAL = {"dc-a": 100, "dc-b": 0}


def make_plan(mutate: Any = None) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    if mutate:
        mutate(data["spec"])
    return parse_plan(data)


def engine(plan: FailoverPlan, journal: Journal, holder: str = "a", *,
           ttl: float = 30.0, clock: testing.FakeClock | None = None) -> Engine:
    now = clock.now if clock is not None else time.time
    sleep = clock.sleep if clock is not None else time.sleep
    return Engine(plan, journal, backends=Backends(plan), holder=holder, lease_ttl=ttl,
                  clock=Clock(now=now, sleep=sleep), backoff=0.01)


def samples(ok: bool, at: float) -> list[Sample]:
    return [Sample(s, ok, at, detail="" if ok else "HTTP 503") for s in SERVICES]


def weights(plan: FailoverPlan) -> dict[str, int]:
    return dict(Backends(plan).get("edge").current())


def outage(e: Engine, clock: testing.FakeClock, ticks: int = 12) -> Phase:
    testing.set_health("dc-a", False)
    phase = Phase.HEALTHY
    for _ in range(ticks):
        clock.advance(0.2)
        phase = e.tick(samples(False, clock.now())).phase
        if phase not in (Phase.HEALTHY, Phase.DEGRADED):
            break
    return phase


class Stubborn(Traffic):
    """A traffic kind whose work ignores cancellation for `seconds` (a hung call)."""

    def __init__(self, seconds: float):
        self.seconds, self.finished = seconds, threading.Event()

    def plan(self, step: Step, ctx: StepContext) -> Change:
        return Change({"before": ctx.backends.get("edge").current()})

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        time.sleep(self.seconds)  # not fencing.pause: this work cannot be stopped
        self.finished.set()
        return {"after": {"dc-a": 0, "dc-b": 100}}

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        return {}


def only_traffic(timeout: str, on_failure: str = "abort", params: Any = None) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"] = [{"name": "shift", "action": "traffic", "backend": "edge",
                          "timeout": timeout, "retries": 0, "onFailure": on_failure,
                          "params": params or {"to": "dc-b",
                                               "weights": {"dc-b": 100, "dc-a": 0}}}]
    return mutate


def test_a_step_whose_work_cannot_stop_stays_unknown_until_it_does(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    stubborn = Stubborn(1.0)
    monkeypatch.setitem(registry.STEP_KINDS, "traffic", stubborn)
    plan = make_plan(only_traffic("200ms"))
    e = engine(plan, journal, ttl=0.6)  # grace = ttl / 3 = 0.2 s
    e.request("failover", actor="oncall", reason="drill")
    e.reconcile()
    rec = journal.steps(journal.runs(plan.name, limit=1)[0].id)[0]
    assert rec.status is StepStatus.UNKNOWN and not stubborn.finished.is_set()
    assert "nothing reverts or proceeds until it stops" in (rec.error or "")
    run = journal.runs(plan.name, limit=1)[0]
    assert run.finished_at is None  # not failed, not reverted: the work may still write
    assert e.reconcile().phase is Phase.FAILING_OVER  # still running: nothing moves
    assert stubborn.finished.wait(2.0)
    e.reconcile()
    rec = journal.step(run.id, "shift")
    assert rec.status is StepStatus.FAILED and rec.evidence["completedLate"] is True
    assert "completed: the change is in place" in (rec.error or "")
    assert journal.run(run.id).phase is Phase.FAILED  # type: ignore[union-attr]


def test_a_slow_step_that_times_out_makes_no_write_after_it_is_recorded(
        journal: Journal) -> None:
    def slow(spec: dict[str, Any]) -> None:
        only_traffic("300ms", "revert")(spec)
        spec["backends"][0]["options"]["delay"] = 1.0

    plan = make_plan(slow)
    e = engine(plan, journal, ttl=3.0)
    e.request("failover", actor="oncall", reason="drill")
    assert e.reconcile().phase is Phase.FAILED
    run = journal.runs(plan.name, limit=1)[0]
    rec = journal.step(run.id, "shift")
    assert rec.status in (StepStatus.FAILED, StepStatus.REVERTED)
    assert "did not finish within its timeout" in (rec.error or "")
    time.sleep(1.3)  # past the moment the old executor's abandoned thread wrote
    assert weights(plan) == ORIGINAL


def test_a_second_process_never_performs_a_running_step(tmp_path: Path) -> None:
    def slow(spec: dict[str, Any]) -> None:
        only_traffic("10s")(spec)
        spec["backends"][0]["options"]["delay"] = 3.0  # longer than the lease's TTL

    plan = make_plan(slow)
    path = tmp_path / "journal.db"
    a = engine(plan, Journal(path), "cli-1", ttl=2.0)  # renews every 0.5 s during the step
    b = engine(plan, Journal(path), "cli-2", ttl=2.0)
    a.request("failover", actor="oncall", reason="drill")
    assert a.holds_lease()
    worker = threading.Thread(target=a.reconcile)
    worker.start()
    acted = []
    while worker.is_alive():
        if b.holds_lease():
            acted.append(time.monotonic())
        b.reconcile()
        time.sleep(0.05)
    worker.join()
    assert acted == []  # never held while a worked
    run = a.journal.runs(plan.name, limit=1)[0]
    rec = a.journal.step(run.id, "shift")
    assert rec.status is StepStatus.SUCCEEDED and rec.attempts == 1
    assert {f["holder"] for f in rec.evidence["fencing"]} == {"cli-1"}
    assert testing.FakeTrafficBackend(
        testing.FakeTrafficOptions(key="edge")).calls() == 2  # enable, then drain: once


def test_an_older_unfinished_run_is_superseded_not_resumed(journal: Journal) -> None:
    clock = testing.FakeClock()
    plan = make_plan()
    e = engine(plan, journal, clock=clock)
    old = journal.start_run(plan=plan.name, kind="failover", phase=Phase.FAILING_OVER,
                            level=1, reason="an old trip", requested_by="controller",
                            detected_at=clock.now(), now=clock.now(), approved=True,
                            steps=e.starter.failover_steps())
    clock.advance(10)
    newer = journal.start_run(plan=plan.name, kind="failback", phase=Phase.FAILING_BACK,
                              level=None, reason="done", requested_by="oncall",
                              detected_at=clock.now(), now=clock.now(), approved=True, steps=[])
    journal.update_run(newer.id, phase=Phase.HEALTHY, finished_at=clock.now(), outcome="ok")
    assert journal.active_run(plan.name) is None  # never handed out for resuming
    clock.advance(1)
    e.reconcile()
    closed = journal.run(old.id)
    assert closed is not None and closed.phase is Phase.SUPERSEDED
    assert f"superseded by the newer run {newer.id}" in (closed.outcome or "")
    assert all(s.status is StepStatus.PENDING for s in journal.steps(old.id))
    assert weights(plan) == ORIGINAL


def test_after_a_premature_failback_the_plan_trips_again(journal: Journal) -> None:
    """Also what a trip during a failback does: the failback (taken first) finishes, the
    policy re-arms from the samples that follow, and the plan trips again."""
    clock = testing.FakeClock()
    plan = make_plan()  # cooldown 1s, dwell 500ms, 3 failures in a row
    e = engine(plan, journal, clock=clock)
    assert outage(e, clock) is Phase.FAILED_OVER
    e.request("failback", actor="oncall", reason="too early: dc-a is still down")
    assert e.reconcile().phase is Phase.DEGRADED  # the last samples: dc-a failing
    assert weights(plan) == ORIGINAL
    phases = []
    for _ in range(30):
        clock.advance(0.2)
        phases.append(e.tick(samples(False, clock.now())).phase)
        if phases[-1] not in (Phase.HEALTHY, Phase.DEGRADED):
            break
    assert Phase.HEALTHY not in phases  # never claimed while dc-a fails
    assert phases[-1] is Phase.FAILED_OVER
    runs = journal.runs(plan.name, limit=3)
    assert [r.kind for r in runs] == ["failover", "failback", "failover"]
    assert weights(plan) == {"dc-a": 0, "dc-b": 100}


def test_a_failover_request_on_a_failed_over_plan_is_refused(journal: Journal) -> None:
    clock = testing.FakeClock()
    plan = make_plan()
    e = engine(plan, journal, clock=clock)
    assert outage(e, clock) is Phase.FAILED_OVER
    dns = Backends(plan).get("zone")
    e.request("failover", actor="oncall", reason="again, by mistake")
    assert e.reconcile().phase is Phase.FAILED_OVER
    refused = journal.runs(plan.name, limit=1)[0]
    assert refused.kind == "failover" and refused.steps == []
    assert refused.outcome == ("nothing to fail over: the plan is already failed over; "
                               "fail back first")
    testing.set_health("dc-a", True)
    e.request("failback", actor="oncall", reason="repaired")
    e.reconcile()
    assert weights(plan) == ORIGINAL
    assert [r.values for r in dns.records()] == [("192.0.2.10",)]


def test_failback_reverts_from_the_definitions_frozen_in_the_run(
        journal: Journal) -> None:
    clock = testing.FakeClock()
    plan = make_plan()
    e = engine(plan, journal, clock=clock)
    assert outage(e, clock) is Phase.FAILED_OVER

    def edited(spec: dict[str, Any]) -> None:  # renamed and re-pointed during the incident
        spec["backends"].append({"name": "edge2", "role": "traffic", "kind": "memory",
                                 "options": {"key": "edge2",
                                             "weights": {"dc-a": 5, "dc-b": 95}}})
        spec["steps"][1].update(name="move-traffic", backend="edge2")

    later = make_plan(edited)
    e2 = engine(later, journal, clock=clock)
    testing.set_health("dc-a", True)
    e2.request("failback", actor="oncall", reason="repaired")
    e2.reconcile()
    back = journal.runs(plan.name, limit=1)[0]
    assert back.kind == "failback" and back.phase is Phase.HEALTHY, back.outcome
    assert weights(plan) == ORIGINAL  # edge, as the failover run froze it
    assert Backends(later).get("edge2").current() == {"dc-a": 5, "dc-b": 95}  # untouched


def test_a_failure_recorded_just_before_a_crash_is_handled_not_skipped(
        journal: Journal) -> None:
    """A step was recorded failed (onFailure: revert) and the controller died before it
    handled that: the next cycle fails the run and reverts, and runs no later step."""
    clock = testing.FakeClock()
    plan = make_plan()
    e = engine(plan, journal, clock=clock)
    e.request("failover", actor="oncall", reason="drill")
    e.reconcile()  # the whole run, then make it look as the crash left it
    run = journal.runs(plan.name, limit=1)[0]
    assert e.holds_lease()
    journal.update_run(run.id, phase=Phase.FAILING_OVER)
    journal._db.execute("UPDATE runs SET finished_at=NULL, outcome=NULL WHERE id=?",
                        (run.id,))
    dns = journal.step(run.id, "dns-cutover")
    dns.status, dns.error = StepStatus.FAILED, "ConnectionError: the answer was lost"
    journal.save_step(dns)
    link = journal.step(run.id, "link-test")
    link.status, link.attempts, link.evidence = StepStatus.PENDING, 0, {}
    journal.save_step(link)
    e.reconcile()
    after = journal.run(run.id)
    assert after is not None and after.phase is Phase.FAILED
    assert "step dns-cutover failed: ConnectionError: the answer was lost" in (
        after.outcome or "")
    assert journal.step(run.id, "link-test").status is StepStatus.PENDING  # never run
    assert weights(plan) == ORIGINAL  # redirect-traffic reverted (onFailure: revert)

"""The engine end to end with the in-memory fakes: trip -> steps in order -> FailedOver,
every step recorded once against its target; approvals, failures, revert, failback, lease."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import testing
from controller.backends import Backends
from controller.executor import Executor
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase, Sample, StepStatus
from controller.plan import FailoverPlan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
SERVICES = ("web", "api", "hotline")


def make_plan(mutate: Any = None) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    if mutate:
        mutate(data["spec"])
    return parse_plan(data)


class World:
    """An engine on a fake clock, plus handles on the fake backends it drives."""

    def __init__(self, plan: FailoverPlan, journal: Journal, holder: str = "test-1",
                 clock: testing.FakeClock | None = None):
        self.plan, self.journal = plan, journal
        self.clock = clock or testing.FakeClock()
        self.backends = Backends(plan)
        self.engine = Engine(plan, journal, backends=self.backends, holder=holder,
                             clock=Clock(now=self.clock.now, sleep=self.clock.sleep),
                             backoff=0.01)

    def tick(self, ok: bool, seconds: float = 0.2):
        self.clock.advance(seconds)
        now = self.clock.now()
        return self.engine.tick([Sample(s, ok, now, detail="" if ok else "HTTP 503")
                                 for s in SERVICES])

    def outage(self, ticks: int = 12):
        testing.set_health("dc-a", False)
        state = None
        for _ in range(ticks):
            state = self.tick(False)
            if state.phase not in (Phase.HEALTHY, Phase.DEGRADED):
                break
        return state

    def run(self):
        return self.journal.runs(self.plan.name, limit=1)[0]

    def steps(self):
        return self.journal.steps(self.run().id)


def test_complete_failover_records_every_step_against_its_target(journal: Journal) -> None:
    w = World(make_plan(), journal)
    assert w.tick(True).phase is Phase.HEALTHY
    state = w.outage()
    assert state.phase is Phase.FAILED_OVER
    assert w.engine.state().active_site == "dc-b"
    run = w.run()
    assert run.kind == "failover" and run.level == 1 and run.requested_by == "controller"
    assert run.reason.startswith("tripped: ")
    steps = w.steps()
    assert [s.name for s in steps] == [s.name for s in w.plan.spec.steps]
    for rec, step in zip(steps, w.plan.spec.steps, strict=True):
        assert rec.status is StepStatus.SUCCEEDED
        assert rec.attempts == 1
        assert rec.target_s == step.target
        assert rec.elapsed_s is not None and rec.since_detection_s is not None
        assert rec.met is True
    # detection is when availability first fell below the floor, before the trip itself
    assert run.detected_at < run.started_at
    assert w.backends.get("edge").current() == {"dc-a": 0, "dc-b": 100}
    assert w.backends.get("zone").records()[0].values == ("198.51.100.10",)
    sent = w.backends.get("im").sent()
    assert sent[0]["recipients"] == ["@all", "sms:broadcast"]  # level 1 reaches everyone
    assert not w.backends.get("mail").sent()  # level 3 e-mail is not for a level-1 incident
    evidence = w.journal.step(run.id, "redirect-traffic").evidence
    assert evidence["before"] == {"dc-a": 100, "dc-b": 0}
    actions = [a["action"] for a in w.journal.audit_trail(run_id=run.id)]
    assert actions[0] == "start-failover" and "notify" in actions
    # nothing runs twice: further ticks leave the finished run alone
    for _ in range(3):
        w.tick(True)
    assert [s.attempts for s in w.steps()] == [1, 1, 1, 1]


def test_time_waiting_for_approval_counts_against_the_targets(journal: Journal) -> None:
    w = World(make_plan(lambda s: s.update(mode="manual")), journal)
    assert w.outage().phase is Phase.AWAITING_APPROVAL
    run = w.run()
    assert not run.approved
    w.clock.advance(2 * 3600)  # nobody approved for two hours
    w.engine.approve(run.id, actor="oncall")
    state = w.engine.reconcile()
    assert state.phase is Phase.FAILED_OVER
    met = {s.name: s.met for s in w.steps()}
    assert met["notify-incident"] is False and met["redirect-traffic"] is False
    assert all(s.status is StepStatus.SUCCEEDED for s in w.steps())


def test_only_listed_approvers_may_approve(journal: Journal) -> None:
    plan = make_plan(lambda s: s.update(mode="manual", approval={"approvers": ["alice"]}))
    w = World(plan, journal)
    w.outage()
    with pytest.raises(PermissionError, match="mallory is not an approver"):
        w.engine.approve(w.run().id, actor="mallory")
    assert w.engine.reconcile().phase is Phase.AWAITING_APPROVAL
    w.engine.approve(w.run().id, actor="alice")
    assert w.engine.reconcile().phase is Phase.FAILED_OVER


def test_gated_step_waits_and_earlier_steps_are_not_repeated(journal: Journal) -> None:
    plan = make_plan(lambda s: s["steps"][2].update(approval=True))
    w = World(plan, journal)
    assert w.outage().phase is Phase.AWAITING_APPROVAL
    status = {s.name: s.status for s in w.steps()}
    assert status["redirect-traffic"] is StepStatus.SUCCEEDED
    assert status["dns-cutover"] is StepStatus.AWAITING_APPROVAL
    w.engine.approve(w.run().id, actor="oncall", step="dns-cutover")
    assert w.engine.reconcile().phase is Phase.FAILED_OVER
    assert w.journal.step(w.run().id, "dns-cutover").approved_by is None or True
    assert [s.attempts for s in w.steps()] == [1, 1, 1, 1]


def test_failed_dns_step_reverts_traffic_exactly(journal: Journal) -> None:
    w = World(make_plan(lambda s: s["backends"][1]["options"].update(fail=True)), journal)
    w.tick(True)
    state = w.outage()
    assert state.phase is Phase.FAILED
    run = w.run()
    assert "step dns-cutover failed: ConnectionError: injected DNS server failure" in (
        run.outcome or "")
    # the failed step is reverted too (a partial change must not stay), newest first
    assert "reverted: dns-cutover, redirect-traffic" in (run.outcome or "")
    assert w.backends.get("edge").current() == {"dc-a": 100, "dc-b": 0}
    assert w.backends.get("zone").records()[0].values == ("192.0.2.10",)
    status = {s.name: s.status for s in w.steps()}
    assert status["redirect-traffic"] is StepStatus.REVERTED
    assert status["link-test"] is StepStatus.PENDING  # never started after the abort
    assert w.journal.step(run.id, "dns-cutover").attempts == 3  # 1 + 2 retries


class Died(BaseException):
    """The process died here (nothing in the engine catches it)."""


def test_a_holder_that_dies_mid_revert_is_finished_by_the_next_and_the_run_fails(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    # found by the operator simulation (seed 736): the next leader saw `reverted` as done
    # and ended the run FailedOver with traffic still on dc-b
    plan = make_plan(lambda s: s["backends"][1]["options"].update(fail=True))
    w = World(plan, journal, holder="a")
    w.tick(True)
    real = Executor.revert
    calls = []

    def dies_after_the_first(self: Executor, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[0].name)
        if len(calls) > 1:
            raise Died
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Executor, "revert", dies_after_the_first)
    with pytest.raises(Died):
        w.outage()
    monkeypatch.setattr(Executor, "revert", real)
    status = {s.name: s.status for s in w.steps()}
    assert status["dns-cutover"] is StepStatus.REVERTED
    assert status["redirect-traffic"] is StepStatus.SUCCEEDED  # its revert never ran
    assert w.backends.get("edge").current() == {"dc-a": 0, "dc-b": 100}

    w.clock.advance(60)  # "a"'s lease expires; "b" takes over the plan
    successor = World(plan, journal, holder="b", clock=w.clock)
    assert successor.tick(False).phase is Phase.FAILED
    run = successor.run()
    assert "step dns-cutover failed: ConnectionError: injected DNS server failure" in (
        run.outcome or "")
    assert "redirect-traffic" in (run.outcome or "").split("reverted: ")[1]
    assert successor.backends.get("edge").current() == {"dc-a": 100, "dc-b": 0}
    assert {s.name: s.status for s in successor.steps()}["redirect-traffic"] is \
        StepStatus.REVERTED


def test_retries_are_bounded(journal: Journal) -> None:
    def flaky(n: int):
        def mutate(spec: dict[str, Any]) -> None:
            spec["backends"][0]["options"]["failShifts"] = n
        return mutate

    w = World(make_plan(flaky(2)), journal)
    assert w.outage().phase is Phase.FAILED_OVER
    assert w.journal.step(w.run().id, "redirect-traffic").attempts == 3

    testing.reset()
    w2 = World(make_plan(flaky(9)), Journal(journal.path.with_name("j2.db")))
    assert w2.outage().phase is Phase.FAILED
    rec = w2.journal.step(w2.run().id, "redirect-traffic")
    assert rec.attempts == 3 and rec.status is StepStatus.REVERTED  # onFailure: revert
    assert "injected traffic backend failure" in (rec.error or "")


def test_continue_on_failure_finishes_with_the_miss_recorded(journal: Journal) -> None:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"][3].update(onFailure="continue", retries=1, timeout="5s")
        spec["backends"][0]["options"]["weights"] = {"dc-a": 100, "dc-b": 0}
        spec["steps"][1]["params"] = {"to": "dc-a", "weights": {"dc-a": 100, "dc-b": 0}}
    w = World(make_plan(mutate), journal)
    state = w.outage()
    assert state.phase is Phase.FAILED_OVER
    link = w.journal.step(w.run().id, "link-test")
    assert link.status is StepStatus.FAILED and link.met is False
    assert "verification failed" in (link.error or "")
    assert "link-test" in (w.run().outcome or "")


def test_failback_restores_what_was_there_before(journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.outage()
    testing.set_health("dc-a", True)
    w.engine.request("failback", actor="oncall", reason="primary repaired")
    state = w.engine.reconcile()
    # back on dc-a; the last samples still show dc-a failing: the plan does not claim health
    assert state.phase is Phase.DEGRADED and w.engine.state().active_site == "dc-a"
    for _ in range(60):
        if (state := w.tick(True)).phase is Phase.HEALTHY:
            break
    assert state.phase is Phase.HEALTHY and w.run().kind == "failback"
    assert w.backends.get("edge").current() == {"dc-a": 100, "dc-b": 0}
    assert w.backends.get("zone").records()[0].values == ("192.0.2.10",)
    back = w.run()
    assert back.kind == "failback" and back.requested_by == "oncall"
    assert [s.name for s in w.steps()] == ["revert-dns-cutover", "revert-redirect-traffic"]


def test_manual_failover_request_runs_without_a_trip(journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)
    w.engine.request("failover", actor="oncall", reason="planned maintenance of dc-a")
    state = w.engine.reconcile()
    assert state.phase is Phase.FAILED_OVER
    assert w.run().requested_by == "oncall"
    assert [a["actor"] for a in journal.audit_trail(plan="memory-drill")][:1] == ["oncall"]


def test_only_the_lease_holder_acts(journal: Journal) -> None:
    plan = make_plan()
    a = World(plan, journal, holder="a")
    b = World(plan, Journal(journal.path), holder="b", clock=a.clock)
    a.tick(True)
    b.engine.request("failover", actor="oncall", reason="test")
    assert b.engine.reconcile().phase is Phase.HEALTHY  # a holds the lease; b stands by
    assert not journal.runs(plan.name)
    a.clock.advance(60)  # a stopped renewing: its lease expired
    assert b.engine.reconcile().phase is Phase.FAILED_OVER
    assert not a.engine.holds_lease()


def test_a_failed_notification_never_blocks(journal: Journal) -> None:
    w = World(make_plan(lambda s: s["backends"][2]["options"].update(fail=True)), journal)
    assert w.outage().phase is Phase.FAILED_OVER
    assert w.backends.get("im").sent() == []


def test_level_rises_during_a_run_and_is_recorded(journal: Journal) -> None:
    plan = make_plan(lambda s: s["steps"][3].update(approval=True))
    w = World(plan, journal)
    w.tick(True)
    testing.set_health("dc-a", False)
    # two services down of three: level 2; then the third goes down too: level 1
    now = w.clock.now()
    state = None
    for _i in range(8):
        w.clock.advance(0.2)
        now = w.clock.now()
        state = w.engine.tick([Sample("web", False, now), Sample("api", True, now),
                               Sample("hotline", False, now)])
        if state.phase is Phase.AWAITING_APPROVAL:
            break
    assert w.run().level == 2
    for _ in range(4):
        w.clock.advance(0.2)
        now = w.clock.now()
        w.engine.tick([Sample(s, False, now) for s in SERVICES])
    assert w.run().level == 1
    assert any(a["action"] == "escalate" for a in journal.audit_trail(run_id=w.run().id))


def _with_human_steps(spec: dict[str, Any]) -> None:
    spec["steps"][0:0] = [
        {"name": "acknowledge-alert", "action": "manual", "parallel": True, "target": "5m",
         "params": {"instructions": "on-call acknowledges the first alert"}},
        {"name": "root-cause-started", "action": "manual", "parallel": True, "target": "30m"},
    ]
    spec["steps"].append({"name": "compensation-plan", "action": "manual", "target": "4h"})


def test_human_steps_run_in_parallel_and_are_timed_against_targets(journal: Journal) -> None:
    w = World(make_plan(_with_human_steps), journal)
    state = w.outage()
    # the machine steps ran; the run waits only for the blocking human step at the end
    assert state.phase is Phase.AWAITING_APPROVAL
    status = {s.name: s.status for s in w.steps()}
    assert status["redirect-traffic"] is StepStatus.SUCCEEDED
    assert status["acknowledge-alert"] is StepStatus.AWAITING_PERSON
    assert status["compensation-plan"] is StepStatus.AWAITING_PERSON
    run = w.run()
    w.clock.advance(180)
    ack = w.engine.done(run.id, "acknowledge-alert", actor="oncall")
    assert ack.met is True and ack.approved_by == "oncall"
    assert ack.since_detection_s is not None and 180 < ack.since_detection_s < 190
    w.clock.advance(3600)  # root-cause analysis not started within 30 min: escalates
    w.engine.reconcile()
    assert any(a["action"] == "overdue" for a in journal.audit_trail(run_id=run.id))
    w.engine.done(run.id, "compensation-plan", actor="lead")
    assert w.engine.reconcile().phase is Phase.FAILED_OVER
    late = w.engine.done(run.id, "root-cause-started", actor="oncall")
    assert late.met is False
    with pytest.raises(LookupError, match="no human step 'redirect-traffic'"):
        w.engine.done(run.id, "redirect-traffic", actor="oncall")


def test_an_expired_approval_does_not_count(journal: Journal) -> None:
    plan = make_plan(lambda s: s.update(mode="manual", approval={"expires": "15m"}))
    w = World(plan, journal)
    w.outage()
    run = w.run()
    w.engine.approve(run.id, actor="alice")
    journal.update_run(run.id, phase=Phase.AWAITING_APPROVAL)
    w.clock.advance(16 * 60)
    assert w.engine.reconcile().phase is Phase.AWAITING_APPROVAL
    w.engine.approve(run.id, actor="alice")
    assert w.engine.reconcile().phase is Phase.FAILED_OVER


def test_failback_after_an_aborted_failover_reverts_what_stayed_and_watches_again(
        journal: Journal) -> None:
    def abort_on_dns(spec: dict[str, Any]) -> None:
        spec["backends"][1]["options"].update(fail=True)
        spec["steps"][2]["onFailure"] = "abort"  # leaves redirect-traffic applied
    w = World(make_plan(abort_on_dns), journal)
    assert w.outage().phase is Phase.FAILED
    assert w.backends.get("edge").current() == {"dc-a": 0, "dc-b": 100}  # half switched

    testing.set_health("dc-a", True)
    w.engine.request("failback", actor="oncall", reason="back to dc-a after the abort")
    state = w.engine.reconcile()
    assert state.phase is Phase.HEALTHY and w.engine.state().active_site == "dc-a"
    assert w.backends.get("edge").current() == {"dc-a": 100, "dc-b": 0}
    # the failed DNS step may have written, so it is reverted too: it finds the original
    # in place and writes nothing (the DNS backend still fails every write)
    assert [s.name for s in w.steps()] == ["revert-dns-cutover", "revert-redirect-traffic"]

    # watching again: once healthy (clearAfter: 3) the next outage trips a new failover
    w.clock.advance(5)
    for _ in range(4):
        w.tick(True)
    assert w.outage().phase is Phase.FAILED  # the DNS backend still fails, as configured
    assert w.run().kind == "failover"

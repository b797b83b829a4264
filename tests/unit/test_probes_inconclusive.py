"""A timeout while the controller itself was late: the deadline moves by the measured stall
(at most 1x the timeout), a timeout the stall explains is inconclusive, and at most
`consecutiveFailures` inconclusive rounds are excused since a service's last good one, so
an outage is still detected. The probe loop's stalls (`LoopLag`) are injected here, so the
verdicts do not depend on the machine's load; tests/contract/probes/
test_probe_controller_late.py stalls a real loop against real servers."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from controller import metrics
from controller.journal import Journal
from controller.model import DecisionState, Sample
from controller.plan import FailoverPlan, parse_plan
from controller.policy import PolicyState, assess, evaluate
from controller.probes import Probe, trace
from controller.probes.lag import LoopLag
from controller.probes.scheduler import (
    News,
    ProbeScheduler,
    Target,
    combine,
    excuse,
    guarded,
    targets_from_plan,
)
from controller.sample_log import SampleLog, recorded

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())


class Stalling(Probe):
    """Records a loop stall of `stall` seconds starting when it is called, then answers
    ok after `answer` seconds, or hangs (answer None), or answers `refused` at once."""

    def __init__(self, lag: LoopLag, stall: float, *, answer: float | None = None,
                 refused: bool = False) -> None:
        self.service, self.lag, self.stall = "web", lag, stall
        self.answer, self.refused = answer, refused

    async def check(self) -> Sample:
        now = time.monotonic()
        if self.stall:
            self.lag.note(now, now + self.stall)
        if self.refused:
            return Sample("web", False, time.time(), detail="web: connection refused")
        if self.answer is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.answer or 0.0)
        return Sample("web", True, time.time(), detail="web: 200")


def run(probe: Probe, timeout: float, lag: LoopLag) -> Sample:
    return asyncio.run(guarded(probe, "web", timeout, lag))


def test_a_stall_moves_the_deadline_so_a_service_read_late_is_good() -> None:
    lag = LoopLag()  # answers 0.6 s after a 0.5 s timeout began, the loop stalled all along
    s = run(Stalling(lag, stall=5.0, answer=0.6), 0.5, lag)
    assert s.ok and s.detail == "web: 200"


def test_the_deadline_moves_at_most_one_timeout_then_the_timeout_is_inconclusive() -> None:
    lag = LoopLag()
    s = run(Stalling(lag, stall=5.0), 0.1, lag)
    assert not s.ok and s.inconclusive
    assert s.latency is not None and s.latency >= 0.2  # 1x the timeout more, not 5 s
    assert s.detail.startswith("web: timed out after 0.1 s while the controller was late by ")


def test_an_on_time_timeout_is_a_failure() -> None:
    lag = LoopLag()
    s = run(Stalling(lag, stall=0.0), 0.1, lag)
    assert not s.ok and not s.inconclusive
    assert s.detail == "web: timed out after 0.1 s"


def test_a_short_stall_still_counts() -> None:
    lag = LoopLag()
    s = run(Stalling(lag, stall=0.01), 0.2, lag)  # 10 ms of a 200 ms timeout: under 10 %
    assert not s.ok and not s.inconclusive


def test_a_refused_connection_counts_however_late_the_loop_was() -> None:
    lag = LoopLag()
    s = run(Stalling(lag, stall=1.0, refused=True), 0.1, lag)
    assert not s.ok and not s.inconclusive and "connection refused" in s.detail


def test_loop_lag_sums_the_stalls_within_the_window() -> None:
    lag = LoopLag()
    lag.note(0.0, 1.0)      # before the window
    lag.note(1.5, 1.5005)   # jitter under MIN_STALL: not a stall
    lag.note(2.0, 2.3)      # inside
    lag.note(2.9, 3.4)      # straddles the end
    assert abs(lag.late(1.8, 3.0) - 0.4) < 1e-9


def test_an_overloaded_loop_warns_once_however_many_rounds_are_excused(
        caplog: pytest.LogCaptureFixture) -> None:
    lag = LoopLag()
    with caplog.at_level(logging.WARNING, logger="controller.probes.lag"):
        for plan in ("a", "b", "c"):
            lag.overloaded(plan, "web: timed out after 0.15 s while the controller was late")
    [record] = caplog.records
    assert "the controller is overloaded" in record.getMessage()
    assert "shard the plans over more replicas" in record.getMessage()


def test_k_of_n_is_inconclusive_only_when_the_inconclusive_probes_decide() -> None:
    ok = Sample("web", True, 0.0)
    bad = Sample("web", False, 0.0, detail="refused")
    late = Sample("web", False, 0.0, detail="late", inconclusive=True)
    assert combine("web", [bad, late, ok], 2, 0.0).inconclusive
    assert not combine("web", [bad, bad, late], 2, 0.0).inconclusive  # failed anyway
    tolerated = combine("web", [late, ok, ok], 2, 0.0)
    assert tolerated.ok and not tolerated.inconclusive


def plan_with(failures: int = 3, dwell: str = "500ms") -> FailoverPlan:
    """The memory drill with web its only core service (as bench_operator.py's trip plan)."""
    data = copy.deepcopy(BASE)
    data["spec"]["trigger"].update(window="60s", consecutiveFailures=failures, dwell=dwell)
    data["spec"]["services"][1]["core"] = False
    return parse_plan(data)


def judged(kinds: list[str], patience: int = 3) -> list[Sample]:
    """Rounds of web ("ok", "fail", "late": an inconclusive timeout) one a second, as the
    scheduler hands them to the policy (`excuse`)."""
    out, excused = [], 0
    for i, kind in enumerate(kinds):
        raw = Sample("web", kind == "ok", 1_000.0 + i, detail=f"web: {kind}",
                     inconclusive=kind == "late")
        sample, excused = excuse(raw, excused, patience)
        out.append(sample)
    return out


def down_after(samples: list[Sample], failures: int = 3) -> list[bool]:
    """Is web down after each sample (the policy, a cycle per sample)?"""
    plan, state, out = plan_with(failures), PolicyState(), []
    for sample in samples:
        _, state = evaluate(plan, state, [sample], sample.at)
        out.append("web" in assess(plan, state, sample.at).down)
    return out


def test_a_timeout_outage_on_a_late_controller_is_down_after_twice_the_failures() -> None:
    samples = judged(["ok"] + ["late"] * 8)
    assert [s.inconclusive for s in samples[1:]] == [True] * 3 + [False] * 5
    assert samples[1].detail == "web: late; not counted: 1 of 3 excused"
    assert samples[4].detail == "web: late; counted: 3 already excused since the last good round"
    assert down_after(samples) == [False] * 6 + [True] * 3  # the bound: 2 x 3 rounds


def test_failures_between_inconclusive_rounds_do_not_renew_the_excuses() -> None:
    # without a good round, 3 excuses in all: down by the 6th failing round, not the 12th
    samples = judged(["ok", "late", "late", "late", "fail", "late", "late"])
    assert [s.inconclusive for s in samples] == [False, True, True, True, False, False, False]
    assert down_after(samples) == [False] * 6 + [True]


def test_a_good_round_renews_the_excuses_so_a_healthy_service_never_trips() -> None:
    samples = judged(["late", "late", "late", "ok"] * 5)
    assert all(s.ok or s.inconclusive for s in samples)
    assert not any(down_after(samples))


def test_a_target_without_patience_counts_every_timeout() -> None:
    sample, excused = excuse(Sample("web", False, 0.0, detail="web: timed out",
                                    inconclusive=True), 0, 0)
    assert (sample.inconclusive, sample.detail, excused) == (False, "web: timed out", 0)


def test_a_plan_excuses_as_many_rounds_as_its_consecutive_failures() -> None:
    targets = targets_from_plan(plan_with(5), lambda owner, spec: Stalling(LoopLag(), 0.0))
    assert {t.patience for t in targets if t.service == "web"} == {5}


def test_inconclusive_samples_do_not_make_a_service_down() -> None:
    plan, state = plan_with(), PolicyState()
    for i, kind in enumerate(["ok", "fail", "fail"] + ["late"] * 10):
        sample = Sample("web", kind == "ok", 1_000.0 + i, inconclusive=kind == "late")
        _, state = evaluate(plan, state, [sample], sample.at)
    assert state.services["web"].failures == 2
    assert "web" not in assess(plan, state, 1_012.0).down


def decisions(plan: FailoverPlan, samples: list[Sample]) -> list[DecisionState]:
    state, out = PolicyState(), []
    for sample in samples:
        decision, state = evaluate(plan, state, [sample], sample.at)
        out.append(decision.state)
    return out


def test_a_late_controller_does_not_judge_the_window_by_its_few_conclusive_probes() -> None:
    # bench_operator.py --plans 10000 tripped so: 2 probes ok, 3 excused, the next counted;
    # 2 of 3 conclusive probes ok is 67 % < 70 %, but the excused ones show no outage
    plan = plan_with(dwell="0s")
    samples = judged(["ok", "ok", "late", "late", "late", "late"])
    assert DecisionState.TRIPPED not in decisions(plan, samples)
    state = PolicyState()
    _, state = evaluate(plan, state, samples, samples[-1].at)
    assert state.observed(plan, samples[-1].at)["services"]["web"]["availability"] == 83.3


def test_a_trip_on_the_floor_says_which_probes_pulled_it_down() -> None:
    plan = plan_with(dwell="0s")
    samples = judged(["fail", "ok", "fail", "ok"])
    state = PolicyState()
    decision, state = evaluate(plan, state, samples, samples[-1].at)
    assert decision.state is DecisionState.TRIPPED
    assert "web: 2 of 4 probes in the window failed" in decision.sentence


def test_a_recorded_trace_keeps_an_inconclusive_sample_inconclusive() -> None:
    late = Sample("web", False, 5.0, detail="web: timed out; not counted", inconclusive=True)
    text = trace.dumps(trace.Trace("late", 0.0, [late, Sample("web", True, 6.0)]))
    assert '"inconclusive": true' in text
    assert [s.inconclusive for s in trace.parse_jsonl(text).samples] == [True, False]


def test_the_sample_log_keeps_no_inconclusive_sample(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "journal.db"))
    SampleLog(journal, "drill").write(
        [Sample("web", False, 10.0, inconclusive=True), Sample("web", False, 11.0)])
    assert [(s.at, s.ok) for s in recorded(journal, "drill", 0.0, 20.0)] == [(11.0, False)]


def test_the_inconclusive_counter_starts_at_zero_so_its_first_increase_shows() -> None:
    plan = plan_with()
    metrics.declare(plan)
    assert REGISTRY.get_sample_value("failover_probe_inconclusive_total",
                                     {"plan": plan.name, "service": "web"}) == 0.0


def test_excused_rounds_wake_no_reconcile_and_the_first_counted_one_does() -> None:
    told: list[int] = []
    samples: list[Sample] = []

    class LoopStaller(Probe):
        service = "web"

        async def check(self) -> Sample:
            lag = LoopLag.acquire()  # the running scheduler's monitor of this loop
            now = time.monotonic()
            lag.note(now, now + 5.0)
            lag.release()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async def main() -> None:
        stop = asyncio.Event()

        def sink(sample: Sample) -> None:
            samples.append(sample)
            if len(samples) == 3:
                stop.set()
        scheduler = ProbeScheduler(
            [Target("web", [LoopStaller()], 0.05, 0.05, patience=2)], sink,
            news=News(lambda: told.append(len(samples))), plan="drill")
        await scheduler.run(stop)
        assert scheduler.stats.inconclusive == 2 and scheduler.stats.failures == 1

    asyncio.run(main())
    assert [s.inconclusive for s in samples] == [True, True, False]
    assert told == [3]  # told once the counted sample is queued

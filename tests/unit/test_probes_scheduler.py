"""The probe scheduler with in-process probes: a hung or raising probe is a failed sample
and never blocks others; k-of-n; spreading; no self-overlap; clean background shutdown;
the rounds that may change a decision wake the reconcile loop (news)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from controller.backends import Backends
from controller.model import Sample
from controller.plan import parse_plan
from controller.probes import Probe as ProbeProtocol
from controller.probes.scheduler import (
    News,
    ProbeScheduler,
    SharedLoop,
    Target,
    combine,
    targets_from_plan,
)

ROOT = Path(__file__).resolve().parents[2]


class Probe(ProbeProtocol):
    """Answers ok/failed, or hangs until cancelled, or raises; counts overlaps."""

    def __init__(self, service: str, mode: str = "ok", delay: float = 0.0):
        self.service, self.mode, self.delay = service, mode, delay
        self.calls = self.active = self.max_active = self.cancelled = 0

    async def check(self) -> Sample:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "hang":
                await asyncio.Event().wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "raise":
                raise RuntimeError("bug in probe")
            return Sample(self.service, self.mode == "ok", time.time(), latency=0.001,
                          detail=self.mode)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


def wait_for(condition: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_hung_probe_becomes_failed_sample_and_others_keep_running() -> None:
    hung, fast = Probe("hung", "hang"), Probe("fast")
    sched = ProbeScheduler([Target("hung", [hung], interval=0.05, timeout=0.2),
                            Target("fast", [fast], interval=0.01, timeout=0.2)], spread=False)
    got: list[Sample] = []
    with sched:
        def enough() -> bool:
            got.extend(sched.drain())
            return sum(s.service == "hung" for s in got) >= 2 and \
                sum(s.service == "fast" for s in got) >= 20
        wait_for(enough)
    hung_samples = [s for s in got if s.service == "hung"]
    assert all(not s.ok and "timed out after 0.2 s" in s.detail for s in hung_samples)
    assert all(s.ok for s in got if s.service == "fast")
    assert hung.cancelled >= 2  # each timed-out check was cancelled, not left running


def test_raising_probe_is_a_failed_sample() -> None:
    sched = ProbeScheduler([Target("x", [Probe("x", "raise")], 1, 1)])
    [s] = asyncio.run(sched.run_once())
    assert not s.ok and "probe error: RuntimeError: bug in probe" in s.detail


def test_non_sample_result_is_a_failed_sample() -> None:
    class Bad(ProbeProtocol):
        service = "x"

        async def check(self) -> object:
            return "yes"
    [s] = asyncio.run(ProbeScheduler([Target("x", [Bad()], 1, 1)]).run_once())
    assert not s.ok and "not a Sample" in s.detail


def test_k_of_n_vantage_points() -> None:
    probes = [Probe("api"), Probe("api", "fail"), Probe("api")]
    [tolerated] = asyncio.run(ProbeScheduler([Target("api", probes, 1, 1)]).run_once())
    assert tolerated.ok and "1/3 probes failed (tolerated; fails at 2)" in tolerated.detail
    probes = [Probe("api", "fail"), Probe("api", "hang"), Probe("api")]
    [failed] = asyncio.run(ProbeScheduler([Target("api", probes, 1, 0.1)]).run_once())
    assert not failed.ok and "2/3 probes failed" in failed.detail
    assert "timed out" in failed.detail
    strict = Target("api", [Probe("api"), Probe("api", "fail")], 1, 1, quorum=1)
    [one] = asyncio.run(ProbeScheduler([strict]).run_once())
    assert not one.ok


def test_combine_keeps_a_single_sample_and_values() -> None:
    s = Sample("sig", True, 1.0, value=7.0)
    assert combine("sig", [s], 1, 2.0) is s
    both = combine("sig", [s, Sample("sig", True, 1.0, latency=0.5)], 2, 2.0)
    assert both.ok and both.value == 7.0 and both.latency == 0.5 and both.at == 2.0


def test_target_validation() -> None:
    with pytest.raises(ValueError, match="interval"):
        Target("x", [Probe("x")], 0, 1)
    with pytest.raises(ValueError, match="quorum 3 > 2"):
        Target("x", [Probe("x"), Probe("x")], 1, 1, quorum=3)
    assert Target("x", [Probe("x")] * 4, 1, 1).quorum == 3


def test_phases_are_spread_over_the_interval() -> None:
    targets = [Target(f"s{i}", [Probe(f"s{i}")], 10.0, 1.0) for i in range(1000)]
    phases = ProbeScheduler(targets)._phases()
    assert all(0 <= p < 10.0 for p in phases)
    per_second = [sum(1 for p in phases if k <= p < k + 1) for k in range(10)]
    assert max(per_second) - min(per_second) <= 2  # no burst: ~100 in every second
    assert ProbeScheduler(targets, spread=False)._phases() == [0.0] * 1000


def test_overrunning_probe_never_overlaps_itself_and_skips_slots() -> None:
    slow = Probe("slow", delay=0.05)
    sched = ProbeScheduler([Target("slow", [slow], interval=0.01, timeout=1.0)], spread=False)
    with sched:
        wait_for(lambda: slow.calls >= 4)
    assert slow.max_active == 1
    assert sched.stats.skipped_slots > 0


def test_sink_callback_and_on_probe_hook_and_sink_errors() -> None:
    seen: list[Sample] = []
    raw: list[Sample] = []

    def sink(sample: Sample) -> None:
        seen.append(sample)
        if len(seen) == 1:
            raise ValueError("a broken sink loses one sample, not the scheduler")

    probes = [Probe("a"), Probe("a", "fail")]
    sched = ProbeScheduler([Target("a", probes, 0.01, 1, quorum=2)], sink, on_probe=raw.append,
                           spread=False)
    with sched:
        wait_for(lambda: len(seen) >= 3)
    assert len(raw) >= 2 * 3 and {s.detail for s in raw} == {"ok", "fail"}
    assert sched.drain() == []  # with a sink nothing is queued


def test_stop_cancels_hung_probes_and_is_idempotent() -> None:
    hung = Probe("h", "hang")
    sched = ProbeScheduler([Target("h", [hung], 1.0, 600.0)], spread=False)
    sched.start()
    wait_for(lambda: hung.active == 1)
    sched.stop()
    assert hung.cancelled == 1 and not sched.running
    sched.stop()
    assert threading.active_count() >= 1


def test_http_probes_share_one_session_and_it_is_closed() -> None:
    class SessionUser(Probe):
        uses_session = True

        def __init__(self) -> None:
            super().__init__("w")
            self.session: object = None

        def use_session(self, session: object) -> None:  # type: ignore[override]
            self.session = session

    a, b = SessionUser(), SessionUser()
    sched = ProbeScheduler([Target("w", [a], 1, 1), Target("v", [b], 1, 1)])
    asyncio.run(sched.run_once())
    assert a.session is not None and a.session is b.session
    assert a.session.closed  # type: ignore[attr-defined]


def test_targets_from_plan_cover_services_signals_and_baseline_queries() -> None:
    """A signal compared with a queried baseline (`baselineQuery`) gets the query as a
    target of its own, `<signal>:baseline`, or it would never have a baseline to breach."""
    data = yaml.safe_load((ROOT / "tests/traces/plan.yaml").read_text())
    complaints = next(s for s in data["spec"]["signals"] if s["name"] == "complaints")
    del complaints["baseline"]
    complaints["baselineQuery"] = {"kind": "memory"}
    plan = parse_plan(data)
    targets = targets_from_plan(plan, Backends(plan).probe, quorum={"web": 1})
    by_name = {t.service: t for t in targets}
    assert set(by_name) == {"web", "api", "app", "hotline", "social", "complaints",
                            "tickets", "traffic", "satisfaction", "complaints:baseline"}
    assert by_name["web"].interval == 2.0 and by_name["web"].timeout == 1.0
    assert by_name["complaints"].interval == 10.0 and by_name["complaints"].timeout == 5.0
    assert by_name["complaints:baseline"].interval == 10.0
    samples = asyncio.run(ProbeScheduler(targets).run_once())
    assert len(samples) == 10 and all(s.ok for s in samples)


def test_one_shared_loop_hosts_many_schedulers_each_with_its_own_samples() -> None:
    shared = SharedLoop()
    probes = {name: Probe(name, "ok" if name != "b" else "failed") for name in "abc"}
    scheds = {name: ProbeScheduler([Target(name, [p], interval=0.01, timeout=0.2)])
              for name, p in probes.items()}
    try:
        for sched in scheds.values():
            shared.start(sched)
        wait_for(lambda: all(p.calls >= 3 for p in probes.values()))
        threads = {t.name for t in threading.enumerate()}
        assert "probe-loop" in threads and "probe-scheduler" not in threads
        got = {name: sched.drain() for name, sched in scheds.items()}
        assert {s.service for s in got["a"]} == {"a"} and all(s.ok for s in got["a"])
        assert got["b"] and not any(s.ok for s in got["b"])

        shared.stop(scheds["b"])  # one plan goes; the others keep probing
        stopped_at = probes["b"].calls
        before = probes["a"].calls
        wait_for(lambda: probes["a"].calls >= before + 3)
        assert probes["b"].calls == stopped_at and probes["b"].active == 0
    finally:
        shared.close()
    assert all(p.active == 0 for p in probes.values())


class Scripted(Probe):
    """Answers as scripted round by round, then ok."""

    def __init__(self, service: str, script: list[bool]):
        super().__init__(service)
        self.script = script

    async def check(self) -> Sample:
        ok = self.script[self.calls] if self.calls < len(self.script) else True
        self.calls += 1
        return Sample(self.service, ok, time.time(), latency=0.001)


def test_failed_rounds_and_the_recovery_after_them_are_news_good_rounds_are_not() -> None:
    seen: list[Sample] = []
    told: list[int] = []  # how many samples were out when the scheduler told its news

    class Counted(News):
        def tell(self) -> None:
            told.append(len(seen))
            super().tell()

    probe = Scripted("web", [True, True, False, False, True, True])
    sched = ProbeScheduler([Target("web", [probe], 0.01, 1)], seen.append, news=Counted(),
                           spread=False)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sched.run(stop))
        while len(seen) < 10:
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    # the two failed rounds and the first good one after them, each once it was out;
    # never a good round of a healthy service
    assert told == [3, 4, 5]


def test_the_loop_woken_by_news_drains_the_round_that_woke_it() -> None:
    sched = ProbeScheduler([Target("web", [Probe("web", "failed")], 600, 1)], spread=False)
    with sched:
        assert sched.news.wait(30)  # the first round fails: the loop need not wait a tick
        [sample] = sched.drain()
    assert not sample.ok
    assert not sched.news.wait(0)  # told once, cleared by the wait that saw it


def test_a_healthy_service_wakes_nothing() -> None:
    sched = ProbeScheduler([Target("web", [Probe("web")], 600, 1)], spread=False)
    with sched:
        wait_for(lambda: sched.pending)
        assert not sched.news.wait(0)  # its samples wait for the loop's own tick
    assert [s.ok for s in sched.drain()] == [True]


def test_one_news_wakes_a_loop_over_several_schedulers() -> None:
    news = News()
    quiet = ProbeScheduler([Target("a", [Probe("a")], 600, 1)], news=news, spread=False)
    failing = ProbeScheduler([Target("b", [Probe("b", "failed")], 600, 1)], news=news,
                             spread=False)
    with quiet, failing:
        assert news.wait(30)
        assert [s.ok for s in failing.drain()] == [False]

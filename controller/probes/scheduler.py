"""The probe scheduler: every service's probes on one asyncio loop, each at its own interval.

Each `Target` (a service or business signal with its probes, interval and timeout) gets
one task that fires on a fixed grid `t0 + phase + k * interval`, so it never drifts and
never overlaps itself (a round that overruns skips the missed slots and counts them).
Phases are spread over the interval with a low-discrepancy sequence, so thousands of
targets with the same interval do not fire in one burst. Every probe call is bounded by
the target's timeout: a slow or hung probe becomes a failed `Sample` ("timed out after
2 s") and never delays another target. A probe that raises despite the protocol becomes
a failed sample too; only cancellation (shutdown) escapes.

A timeout is evidence about the service only if the controller was on time. Owns the
rules for a timeout while the probe loop was late; why each rule:

- **Measured, not guessed**: `LoopLag` (controller/probes/lag.py) measures how long the
  loop was stalled during each probe; ordinary jitter (< 1 ms a wake-up) is no stall, so
  a controller that is on time counts every timeout as before.
- **The deadline moves by the stall, at most 1x the timeout** (`EXTEND`): when the
  timeout comes, the probe gets the time the loop was stalled back, so a healthy service
  that was merely read late answers and its round is good — no verdict to excuse. A hung
  service or a blackholed address still fails, after at most 2x its timeout.
- **Inconclusive when the stall explains it**: a timeout after which the loop had lost at
  least `LATE_FRACTION` of the timeout is *inconclusive* ("timed out after 0.15 s while
  the controller was late by 180 ms"): ok stays False, but the policy neither counts it
  nor lets it break a run of failures, and counts it in the window as no evidence of an
  outage (controller/policy.py). Any other failure (refused, reset, a 5xx) is the
  service's own answer and always counts.
- **Bounded** (`excuse`): since a target's last good round, at most `patience` (the
  plan's `consecutiveFailures`) inconclusive rounds are excused; every further one counts
  as a failure. A service that fails every round — hung, blackholed, down — is therefore
  DOWN after at most 2 x consecutiveFailures rounds (each at most 2x its timeout) however
  overloaded the controller is: detection is at most `consecutiveFailures` rounds late,
  never lost. A missed failover is worse than a false one, so the bound wins: a loop so
  starved that a healthy service has no good round in 2 x consecutiveFailures rounds
  trips it, and the warning below said why beforehand.
- **Said once**: an excused round warns that the controller is overloaded (once a minute
  per loop, not per plan) and counts in `failover_probe_inconclusive_total`; it is no
  news (it cannot change a decision), so an overloaded loop wakes no extra reconciles.

Several probes of one service are vantage points of one question; their results are
combined into one sample per round that fails when at least `quorum` of the n probes
failed (k-of-n; default a majority). The raw per-probe samples go to `on_probe` (for
latency histograms and per-probe failure counts).

Samples go to `sink` (called on the loop thread) or, by default, to a thread-safe queue
that the synchronous engine empties with `drain()` each tick while `start()` runs the
loop in a background thread; `stop()` cancels every round, kills what probes started and
closes the shared HTTP session. `run_once()` probes every target once, concurrently.

A round that may change a decision is news: a failed round, or a target's first good
round after failed ones. The scheduler tells its `News` once the sample is queued, so a
reconcile loop waiting on `news.wait(tick)` runs a cycle at once instead of at its next
tick: detection then costs the probes' own `interval x consecutiveFailures`, not up to a
tick more (tests/benchmarks/bench_rto.py --fast). Good rounds of a healthy target are no
news and wake nothing, so a quiet plan is reconciled on its tick as before. One `News`
may be shared by several schedulers (one loop over several plans); one with `on_tell`
calls it on every news (the operator queues that plan, and only that plan, at once).

Host names are looked up on the loop by one `ProbeResolver` (the process-wide one unless
given), handed to every probe that has `use_resolver` and to the shared HTTP session: a
lookup is cancelled with its probe, so a name whose nameserver never answers cannot tie up
a thread pool and starve the other probes (see `controller/probes/resolve.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from controller.model import Sample
from controller.probes import Probe
from controller.probes.lag import MIN_STALL, LoopLag
from controller.probes.tcp import describe_error, short

if TYPE_CHECKING:
    from controller.probes.resolve import ProbeResolver

log = logging.getLogger(__name__)

SampleSink = Callable[[Sample], None]
_GOLDEN = 0.6180339887498949
# A timeout is inconclusive when the loop was seen stalled for at least this share of it
# (15 ms of a 150 ms timeout). Low, because the heartbeat sees less than a probe pays: in a
# starved process each of a probe's wake-ups (connect, send, read) is late, the heartbeat
# counts only its own; 25 % still let timeouts of a healthy service count in
# bench_operator.py --plans 10000.
LATE_FRACTION = 0.10
EXTEND = 1.0  # the deadline moves by the measured stall, at most this many timeouts


@dataclass
class Target:
    """One service (or signal): its probes, how often they run and how long they may take."""

    service: str
    probes: Sequence[Probe]
    interval: float
    timeout: float
    quorum: int = 0  # failed probes that make the round fail; 0 = majority of the probes
    patience: int = 0  # inconclusive rounds excused since the last good one (see `excuse`)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"{self.service}: interval must be positive")
        if self.timeout <= 0:
            raise ValueError(f"{self.service}: timeout must be positive")
        if not self.probes:
            raise ValueError(f"{self.service}: a target needs at least one probe")
        n = len(self.probes)
        if self.quorum <= 0:
            self.quorum = n // 2 + 1
        if self.quorum > n:
            raise ValueError(f"{self.service}: quorum {self.quorum} > {n} probes")
        if self.patience < 0:
            raise ValueError(f"{self.service}: patience must be 0 or more")


def targets_from_plan(plan: Any, build: Callable[[str, Any], Probe], *,
                      quorum: dict[str, int] | None = None,
                      signal_timeout: float = 5.0) -> list[Target]:
    """Targets for a FailoverPlan's services and signals (and the baseline queries of
    signals that have one, named `<signal>:baseline`); `build(owner, ProbeSpec)` makes
    a probe (e.g. `Backends.probe`). A service's timeout is used as written (the plan
    refuses one longer than the interval); a signal's is min(signal_timeout, interval).
    A service excuses as many inconclusive rounds as the trigger's consecutiveFailures."""
    quorum = quorum or {}
    patience = plan.spec.trigger.consecutive_failures
    targets = [
        Target(s.name, [build(s.name, p) for p in s.probes], s.interval, s.timeout,
               quorum.get(s.name, s.quorum), patience)
        for s in plan.spec.services
    ]
    targets += [
        Target(sig.name, [build(sig.name, sig.probe)], sig.interval,
               min(signal_timeout, sig.interval))
        for sig in plan.spec.signals
    ]
    targets += [  # a signal compared with a queried baseline: the query is a target too
        Target(sig.baseline_name, [build(sig.name, sig.baseline_query)], sig.interval,
               min(signal_timeout, sig.interval))
        for sig in plan.spec.signals if sig.baseline_query is not None
    ]
    return targets


def combine(service: str, samples: Sequence[Sample], quorum: int, at: float) -> Sample:
    """k-of-n: the round fails when at least `quorum` of the probes failed; it is
    inconclusive when only the inconclusive probes could make it fail."""
    if len(samples) == 1:
        return samples[0]
    failed = [s for s in samples if not s.ok]
    definite = sum(not s.inconclusive for s in failed)
    ok = len(failed) < quorum
    inconclusive = not ok and definite < quorum
    latencies = [s.latency for s in samples if s.latency is not None]
    value = next((s.value for s in samples if s.ok and s.value is not None), None)
    n = len(samples)
    if failed:
        verdict = "tolerated" if ok else "inconclusive" if inconclusive else "failed"
        detail = (f"{len(failed)}/{n} probes failed ({verdict}; fails at {quorum}): "
                  + "; ".join(s.detail for s in failed))
    else:
        detail = f"{n}/{n} probes ok"
    return Sample(service, ok, at, latency=max(latencies) if latencies else None,
                  detail=short(detail), value=value, inconclusive=inconclusive)


async def guarded(probe: Probe, service: str, timeout: float,
                  lag: LoopLag | None = None) -> Sample:
    """Run one check bounded by `timeout`; any failure is a failed sample, never an error.
    With `lag`, the deadline moves by the loop's stall (at most `EXTEND` x timeout) and a
    timeout the stall explains (`LATE_FRACTION`) is inconclusive (module docstring)."""
    at, start = time.time(), time.monotonic()
    try:
        if lag is None:
            async with asyncio.timeout(timeout):
                sample = await probe.check()
        else:
            async with asyncio.timeout(None) as deadline:
                moving = _MovingDeadline(deadline, lag, start, timeout)
                try:
                    sample = await probe.check()
                finally:
                    moving.cancel()
    except TimeoutError:
        end = time.monotonic()
        late = lag.late(start, end) if lag is not None else 0.0
        detail = f"{service}: timed out after {timeout:g} s"
        if late < LATE_FRACTION * timeout:
            return Sample(service, False, at, latency=end - start, detail=detail)
        return Sample(service, False, at, latency=end - start, inconclusive=True,
                      detail=f"{detail} while the controller was late by "
                             f"{late * 1000:.0f} ms")
    except Exception as exc:
        log.debug("probe for %s raised", service, exc_info=True)
        return Sample(service, False, at, latency=time.monotonic() - start,
                      detail=short(f"{service}: probe error: {describe_error(exc)}"))
    if not isinstance(sample, Sample):
        return Sample(service, False, at, latency=time.monotonic() - start,
                      detail=f"{service}: probe returned {type(sample).__name__}, not a Sample")
    return sample


class _MovingDeadline:
    """Expires `deadline` (an `asyncio.timeout`) `timeout` seconds after `start`, plus the
    time `lag` saw the loop stalled since, at most `EXTEND` x timeout more."""

    def __init__(self, deadline: asyncio.Timeout, lag: LoopLag, start: float,
                 timeout: float) -> None:
        self._deadline, self._lag, self._start, self._timeout = deadline, lag, start, timeout
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(timeout, self._due)

    def _due(self) -> None:
        now = time.monotonic()
        late = min(self._lag.late(self._start, now), EXTEND * self._timeout)
        left = self._start + self._timeout + late - now
        if left > MIN_STALL:
            self._handle = self._loop.call_later(left, self._due)
        else:
            self._deadline.reschedule(self._loop.time())  # expires on the next iteration

    def cancel(self) -> None:
        self._handle.cancel()


def excuse(sample: Sample, excused: int, patience: int) -> tuple[Sample, int]:
    """The bound on inconclusive rounds: (`sample` as the policy gets it, the inconclusive
    rounds excused since the target's last good round, `excused` before this one). Up to
    `patience` of them stay inconclusive ("not counted: 1 of 3 excused"); a further one
    counts as a failure ("counted: 3 already excused since the last good round")."""
    if sample.ok:
        return sample, 0
    if not sample.inconclusive:
        return sample, excused
    if excused < patience:
        return replace(sample, detail=short(
            f"{sample.detail}; not counted: {excused + 1} of {patience} excused")), excused + 1
    counted = f"; counted: {patience} already excused since the last good round"
    return replace(sample, inconclusive=False,
                   detail=short(sample.detail + counted if patience else sample.detail)
                   ), excused


class News:
    """Set when a round may change a decision (see the module docstring); the reconcile
    loop waits on it between cycles. Thread-safe: told on the probe loop's thread, waited
    on by the loop's."""

    def __init__(self, on_tell: Callable[[], None] | None = None) -> None:
        self._event = threading.Event()
        self._on_tell = on_tell  # e.g. the operator queues the plan at once

    def tell(self) -> None:
        self._event.set()
        if self._on_tell is not None:
            try:
                self._on_tell()
            except Exception:  # the probe round goes on; the plan's tick still comes
                log.exception("news hook failed")

    def wait(self, timeout: float) -> bool:
        """Until news or `timeout` seconds; True on news. Cleared on return: a round queued
        before this returns is in the next `drain()`, one after it wakes the next wait."""
        told = self._event.wait(timeout)
        self._event.clear()
        return told


@dataclass
class Stats:
    """What the scheduler did; lag = how late a round started against its slot (seconds)."""

    rounds: int = 0
    probes: int = 0
    failures: int = 0
    inconclusive: int = 0  # rounds not counted: a timeout while the loop was late
    skipped_slots: int = 0
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def lag_percentile(self, pct: float) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1)]


class ProbeScheduler:
    """Runs targets on one asyncio loop; see the module docstring for the guarantees."""

    def __init__(self, targets: Iterable[Target], sink: SampleSink | None = None, *,
                 on_probe: SampleSink | None = None, spread: bool = True,
                 session_limit: int = 100, resolver: ProbeResolver | None = None,
                 news: News | None = None, plan: str = ""):
        self.targets = list(targets)
        self.plan = plan  # named in the overload warning
        self.news = news or News()
        self._resolver = resolver
        self._sink = sink
        self._on_probe = on_probe
        self._spread = spread
        self._session_limit = session_limit
        self._queue: queue.SimpleQueue[Sample] = queue.SimpleQueue()
        self.stats = Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._session: Any = None
        self._lag: LoopLag | None = None
        self.error: BaseException | None = None

    # --- samples out ---------------------------------------------------------------------

    def _emit(self, sample: Sample) -> None:
        if self._sink is None:
            self._queue.put(sample)
            return
        try:
            self._sink(sample)
        except Exception:
            log.exception("sample sink failed for %s; sample dropped", sample.service)

    @property
    def pending(self) -> bool:
        """True when samples wait to be drained."""
        return not self._queue.empty()

    def drain(self) -> list[Sample]:
        """Every sample produced since the last drain (thread-safe, never blocks)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    # --- one round -----------------------------------------------------------------------

    async def _round(self, target: Target) -> Sample:
        at = time.time()
        if len(target.probes) == 1:
            results = [await guarded(target.probes[0], target.service, target.timeout,
                                     self._lag)]
        else:
            results = list(await asyncio.gather(
                *(guarded(p, target.service, target.timeout, self._lag)
                  for p in target.probes)))
        self.stats.rounds += 1
        self.stats.probes += len(results)
        if self._on_probe is not None:
            for raw in results:
                try:
                    self._on_probe(raw)
                except Exception:
                    log.exception("on_probe hook failed")
        return combine(target.service, results, target.quorum, at)

    def _count(self, sample: Sample) -> None:
        if sample.inconclusive:
            self.stats.inconclusive += 1
            if self._lag is not None:
                self._lag.overloaded(self.plan, sample.detail)
        elif not sample.ok:
            self.stats.failures += 1

    async def _drive(self, target: Target, phase: float, t0: float) -> None:
        loop = asyncio.get_running_loop()
        slot = t0 + phase
        failing, excused = False, 0
        while True:
            delay = slot - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.stats.lags.append(max(0.0, loop.time() - slot))
            sample, excused = excuse(await self._round(target), excused, target.patience)
            self._count(sample)
            self._emit(sample)
            if not sample.inconclusive:  # an excused round cannot change a decision
                if failing or not sample.ok:  # queued first: the woken loop drains it
                    self.news.tell()
                failing = not sample.ok
            slot += target.interval
            behind = loop.time() - slot
            if behind > 0:  # the round overran its interval: skip the missed slots
                missed = math.ceil(behind / target.interval)
                self.stats.skipped_slots += missed
                slot += missed * target.interval

    def _phases(self) -> list[float]:
        if not self._spread:
            return [0.0] * len(self.targets)
        return [((i * _GOLDEN) % 1.0) * t.interval for i, t in enumerate(self.targets)]

    # --- shared resources ----------------------------------------------------------------

    def _share_session(self) -> Any:
        """Prepare the probes: each learns its target's timeout (`limit_timeout`: a probe
        that bounds work outside this process, such as a database statement, bounds it by
        what the scheduler gives it) and the resolver; then one pooled HTTP session for
        every probe that can use it (created lazily, on the running loop, and reused until
        `aclose`)."""
        for target in self.targets:
            for probe in target.probes:
                probe.limit_timeout(target.timeout)
                if self._resolver is not None:
                    probe.use_resolver(self._resolver)
        users = [p for t in self.targets for p in t.probes if p.uses_session]
        if not users:
            return None
        if self._session is None or self._session.closed:
            from controller.probes.http import make_session

            self._session = make_session(limit=self._session_limit, resolver=self._resolver)
        for probe in users:
            probe.use_session(self._session)
        return self._session

    async def aclose(self) -> None:
        """Close what the probes opened and the shared session."""
        for probe in (p for t in self.targets for p in t.probes):
            with contextlib.suppress(Exception):
                await probe.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- running -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Probe until `stop` is set (or the task is cancelled), then clean up."""
        self._share_session()
        self._lag = lag = LoopLag.acquire()
        t0 = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(self._drive(t, phase, t0), name=f"probe:{t.service}")
                 for t, phase in zip(self.targets, self._phases(), strict=True)]
        try:
            if stop is None:
                await asyncio.gather(*tasks)
            else:
                await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            lag.release()
            await self.aclose()

    async def run_once(self, *, close: bool = True) -> list[Sample]:
        """Every target once, concurrently; returns the (combined) samples. With
        close=False the pooled connections stay open for the next call (then `aclose`)."""
        self._share_session()
        self._lag = lag = LoopLag.acquire()
        try:
            samples = list(await asyncio.gather(*(self._round(t) for t in self.targets)))
            for sample in samples:
                self._count(sample)
            return samples
        finally:
            lag.release()
            if close:
                await self.aclose()

    def start(self) -> None:
        """Run the scheduler on its own loop in a background (daemon) thread."""
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name="probe-scheduler",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()

    def _thread_main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            self._ready.set()
            await self.run(self._stop_event)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop(); the thread must not die silently
            self.error = exc
            log.exception("probe scheduler stopped with an error")
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread: cancel rounds, close sessions, join."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"probe scheduler did not stop within {timeout:g} s")
        self._thread = self._loop = self._stop_event = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> ProbeScheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SharedLoop:
    """One asyncio loop, in one background thread, hosting many schedulers at once.

    The operator probes every plan's services; a loop (and a thread) per plan would cost
    a thousand threads for a thousand plans. Each hosted scheduler keeps its own targets,
    session and sample queue (`drain()` and `pending` work as with `start()`); `stop()`
    ends one scheduler's rounds without touching the others.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="probe-loop",
                                        daemon=True)
        self._thread.start()
        self._hosted: dict[int, tuple[asyncio.Event, Any]] = {}

    def start(self, scheduler: ProbeScheduler) -> None:
        """Host `scheduler`, without waiting for the loop (an Event binds to its loop on
        first use): a thousand plans starting do not queue behind the probe loop."""
        event = asyncio.Event()
        future = asyncio.run_coroutine_threadsafe(scheduler.run(event), self._loop)
        self._hosted[id(scheduler)] = (event, future)

    def stop(self, scheduler: ProbeScheduler, timeout: float = 10.0) -> None:
        hosted = self._hosted.pop(id(scheduler), None)
        if hosted is None:
            return
        event, future = hosted
        self._loop.call_soon_threadsafe(event.set)
        try:
            future.result(timeout)
        except Exception:  # a scheduler that failed is stopped all the same
            log.exception("probe scheduler stopped with an error")

    def close(self) -> None:
        for key in list(self._hosted):
            event, future = self._hosted.pop(key)
            self._loop.call_soon_threadsafe(event.set)
            with contextlib.suppress(Exception):
                future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

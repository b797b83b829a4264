"""How late the probe loop itself was: the measure behind a timeout's extension and its
"inconclusive" verdict (the rules are in `controller/probes/scheduler.py`).

A probe's timeout measures the service only if the controller was on time: when the
event loop is starved (thousands of plans on one replica, a slow callback, a GC pause) the
request goes out late and the answer is read late, and a healthy service "times out".

`LoopLag` is one heartbeat task per event loop, shared by every scheduler on it: it sleeps
`TICK` seconds and records each wake-up that came late as a stall — the span
[when it was due, when it ran] during which the loop could not run anything. `late(start,
end)` sums the stalls within a probe's window, including one still going on (the
heartbeat overdue now: the loop ran the timeout before the heartbeat). A stall shorter
than `TICK` between two heartbeats can go unseen, so the measure errs towards counting a
timeout as a failure, never towards excusing one. It also rate-limits the warning that
the controller is overloaded (`overloaded`): once a minute per loop, however many plans
share it, so an overloaded replica does not also flood its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque

log = logging.getLogger(__name__)

# 100 wake-ups a second per loop (not per plan): unseen stalls stay < 10 ms. A starved
# process (other threads holding the GIL, the host's CPUs busy) makes each wake-up of the
# loop late by a few ms; a probe wakes about every 10 ms (connect, send, read, parse), so
# a heartbeat as frequent counts that lateness about as often as the probe pays it.
TICK = 0.01
MIN_STALL = 0.001  # lateness below this is the loop's ordinary jitter, not a stall
KEEP = 4096  # stalls remembered: over a minute at one per tick, longer than any timeout
WARN_EVERY = 60.0  # seconds between two "controller overloaded" warnings of one loop

_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = (
    weakref.WeakKeyDictionary())


class LoopLag:
    """The stalls of one event loop (use `acquire`/`release`, on that loop)."""

    def __init__(self) -> None:
        self._stalls: deque[tuple[float, float]] = deque(maxlen=KEEP)
        self._due: float | None = None  # when the pending heartbeat should run
        self._users = 0
        self._task: asyncio.Task[None] | None = None
        self._warned_at = -WARN_EVERY
        self._unwarned = 0  # excused rounds since the last warning

    @classmethod
    def acquire(cls) -> LoopLag:
        """The running loop's monitor, started on first use."""
        loop = asyncio.get_running_loop()
        lag = _LOOPS.get(loop)
        if lag is None:
            lag = _LOOPS[loop] = cls()
        lag._users += 1
        if lag._task is None:
            lag._task = loop.create_task(lag._beat(), name="probe-loop-lag")
        return lag

    def release(self) -> None:
        """One user fewer; the heartbeat stops with the last."""
        self._users -= 1
        if self._users <= 0 and self._task is not None:
            self._task.cancel()
            self._task, self._due = None, None

    async def _beat(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self._due = time.monotonic() + TICK
                await asyncio.sleep(TICK)
                self.note(self._due, time.monotonic())

    def note(self, due: float, ran: float) -> None:
        """Record that something due at `due` ran at `ran` (`time.monotonic()`)."""
        if ran - due >= MIN_STALL:
            self._stalls.append((due, ran))

    def late(self, start: float, end: float) -> float:
        """Seconds of [start, end] (`time.monotonic()`) during which the loop was stalled."""
        total = 0.0
        if self._due is not None and end - self._due >= MIN_STALL:  # stalled right now
            total += end - max(self._due, start)
        for due, ran in reversed(self._stalls):
            if ran <= start:
                break
            total += max(0.0, min(ran, end) - max(due, start))
        return total

    def overloaded(self, plan: str, detail: str) -> None:
        """A round of `plan` was excused (`detail`): warn, at most once per `WARN_EVERY`."""
        self._unwarned += 1
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY:
            return
        log.warning(
            "the controller is overloaded: its probe loop ran late, so %d timed-out "
            "probe round(s) proved nothing about their services and were not counted "
            "(e.g. %s: %s). An outage is detected up to consecutiveFailures rounds late "
            "while this lasts; shard the plans over more replicas, watch fewer plans per "
            "replica or give the services longer timeouts.",
            self._unwarned, plan or "a plan", detail)
        self._warned_at, self._unwarned = now, 0

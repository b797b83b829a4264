"""The clock every acting part takes by injection: wall time for records, a monotonic clock
for deadlines, sleeping, and the cancellable wait a step's pauses use.

Why: records carry wall time (people read them), but a deadline measured on wall time
moves when the clock is stepped, so deadlines use the monotonic clock and `stepped` says
when wall time jumped (the policy then moves its timestamps by the jump: durations stay
true); and the safety simulation replaces all four with a simulated clock so that a
schedule is a pure function of its seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.fencing import Fence

STEP = 1.0
"""Seconds by which wall time may drift from the monotonic clock between two readings
before it counts as a step of the clock (NTP slews far slower than this)."""


@dataclass
class Clock:
    now: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    wait: Callable[[float, Fence], None] | None = None  # None: Fence waits on its own event

    def __post_init__(self) -> None:
        # an injected wall clock without a monotonic one (a test's fake clock) is steady:
        # it is its own monotonic clock
        if self.now is not time.time and self.monotonic is time.monotonic:
            self.monotonic = self.now
        self._last: tuple[float, float] | None = None

    def stepped(self) -> float:
        """By how much wall time jumped since the last call, beyond what the monotonic
        clock saw (0 when it did not: within STEP); -3600 for a clock set back an hour."""
        now, mono = self.now(), self.monotonic()
        last, self._last = self._last, (now, mono)
        if last is None:
            return 0.0
        jump = (now - last[0]) - (mono - last[1])
        return jump if abs(jump) > STEP else 0.0

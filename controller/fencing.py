"""Fencing and cancellation of a step's work: one `Fence` per step attempt.

Owns the token a lease acquisition yields and the means to stop work that must stop.
Why each rule:

- **Every world-changing call checks the fence first** (`fencing.check()`): a step whose
  timeout passed, or whose controller lost its lease, stops before its next write instead
  of finishing a change the record already calls failed. A backend calls `check()` right
  before each write; a pause inside a step (`fencing.pause`) wakes at once on cancel.
- **The token only grows.** Each lease acquisition (journal, host lock, etcd, Kubernetes
  Lease) yields a larger token than any earlier holder's (`next_token`: the last + 1 or
  the time in milliseconds, whichever is larger, where the store may start over); a write
  that carries it can be refused by a target that has seen a larger one (`StaleToken`),
  so a deposed holder whose work could not be stopped still cannot overwrite the new
  holder's world.
- **A fence expires with the lease it was renewed under**: work in a process that was
  paused (a stopped VM, a long pause) past the time its lease was surely its own refuses
  to write until the executor has renewed it; by then another holder may have acted.
- **The fence travels with the work, not through every signature**: the executor runs the
  step's work inside `scope(fence)` (a context variable, copied into the worker thread),
  so backends keep their keyword-only protocols and a call outside any step (a readiness
  check, a dry run) is never fenced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar


def next_token(last: int, now: float | None = None) -> int:
    """The token of a new acquisition: larger than the last one, and than the clock in
    milliseconds, so a lease store that starts over (a new journal, a lock file on a tmpfs
    after a reboot) still hands out tokens above every one seen before."""
    return max(last + 1, int((time.time() if now is None else now) * 1000))


class LostLease(Exception):
    """Another controller holds the lease: stop acting at once, leave the step to it."""


class Cancelled(Exception):
    """The step's work was told to stop (its timeout passed or the lease was lost)."""


class StaleToken(Exception):
    """A target refused a write whose fencing token is older than one it has seen."""


class Fence:
    """The fencing token of one step attempt and the switch that cancels its work.

    `wait(seconds, fence)` replaces the real pause (the simulation's clock); without it a
    pause is an `Event.wait` that returns as soon as the fence is cancelled.
    """

    def __init__(self, token: int, holder: str, *, label: str = "",
                 wait: Callable[[float, Fence], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 valid_until: float | None = None):
        self.token, self.holder, self.label = token, holder, label  # label: "RUN/STEP"
        self.reason: str | None = None
        # the lease is surely ours until then (clock): a process that was paused past it
        # (a stopped VM, a long GC) refuses to write until its lease has been renewed
        self.valid_until = valid_until
        self._clock = clock
        self._event = threading.Event()
        self._wait = wait

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def check(self) -> None:
        """Raise Cancelled if the work must stop; call before every world-changing call."""
        if not self._event.is_set() and self.valid_until is not None and \
                self._clock() > self.valid_until:
            self.cancel("the lease was not renewed in time (it may have passed to another "
                        "controller)")
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def pause(self, seconds: float) -> None:
        """Wait `seconds` or until cancelled, then check."""
        if self._wait is not None:
            self._wait(seconds, self)
        else:
            self._event.wait(max(seconds, 0.0))
        self.check()


_CURRENT: ContextVar[Fence | None] = ContextVar("fence", default=None)


def current() -> Fence | None:
    return _CURRENT.get()


def check() -> None:
    """Before a world-changing call: raise Cancelled when the current step must stop."""
    fence = _CURRENT.get()
    if fence is not None:
        fence.check()


def token() -> int | None:
    """The fencing token of the step running in this context (None outside a step)."""
    fence = _CURRENT.get()
    return None if fence is None else fence.token


def holder() -> str | None:
    fence = _CURRENT.get()
    return None if fence is None else fence.holder


def pause(seconds: float) -> None:
    """A pause inside a step (a stepped shift's dwell): cancellable, then checked."""
    fence = _CURRENT.get()
    if fence is None:
        time.sleep(seconds)
    else:
        fence.pause(seconds)


@contextmanager
def scope(fence: Fence) -> Iterator[Fence]:
    reset = _CURRENT.set(fence)
    try:
        yield fence
    finally:
        _CURRENT.reset(reset)

"""The operator's work queue: which FailoverPlans wait for a worker, each at most once.

Client-go's rules, which the operator's workers rely on: a key is queued once however
often it is added (a watch event, the ticker, probe news); a key being processed is never
handed to a second worker, and one added meanwhile is queued again when its worker is
done, so no change is lost and one plan is never reconciled twice at once. Routine work
(`urgent=False`: the ticker's due plans, ten thousand of them every few seconds) waits
behind urgent work (a spec edit, a request, a probe's news), so a change is never queued
behind quiet plans' ticks; a routine key added again urgently moves ahead. `waited()` is
the operator's liveness signal: how long the oldest key has waited for a worker.
`close()` wakes every waiting worker at once (shutdown), so workers can wait long
between keys instead of polling: dozens of idle workers cost nothing.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time


class WorkQueue:
    """Deduplicating keys; a key being processed is never handed to a second worker;
    urgent keys go before routine ones."""

    def __init__(self) -> None:
        # (ticket, key) in order; an entry whose ticket is no longer the key's is stale
        self._urgent: collections.deque[tuple[int, str]] = collections.deque()
        self._routine: collections.deque[tuple[int, str]] = collections.deque()
        self._queued: dict[str, tuple[int, bool]] = {}  # key -> (its ticket, urgent)
        self._again: dict[str, bool] = {}  # added while busy -> urgent: queued when done
        self._busy: set[str] = set()
        self._since: dict[str, float] = {}  # key -> time.monotonic() it was queued
        self._tickets = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: str, *, urgent: bool = True) -> None:
        """Queue `key` once. `urgent=False` for routine work (a due tick): it waits behind
        every urgent key (a change, a probe's news), which never waits behind it."""
        with self._cond:
            if key in self._busy:
                self._again[key] = self._again.get(key, False) or urgent
                return
            queued = self._queued.get(key)
            if queued is not None and (queued[1] or not urgent):
                return  # queued already, as urgently
            self._enqueue(key, urgent)

    def _enqueue(self, key: str, urgent: bool) -> None:
        ticket = next(self._tickets)
        self._queued[key] = (ticket, urgent)
        (self._urgent if urgent else self._routine).append((ticket, key))
        self._since.setdefault(key, time.monotonic())
        self._cond.notify()

    def get(self, timeout: float) -> str | None:
        """The next key, urgent ones first, waiting at most `timeout` seconds; None when
        none came or the queue is closed."""
        with self._cond:
            if not self._queued and not self._closed:
                self._cond.wait(timeout)
            if not self._queued or self._closed:
                return None
            key = self._pop(self._urgent) or self._pop(self._routine)
            assert key is not None  # every queued key has a live entry
            del self._queued[key]
            self._since.pop(key, None)
            self._busy.add(key)
            return key

    def _pop(self, lane: collections.deque[tuple[int, str]]) -> str | None:
        while lane:
            ticket, key = lane.popleft()
            if self._queued.get(key, (None,))[0] == ticket:
                return key
        return None

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            if key in self._again:  # changed while we worked on it: once more
                self._enqueue(key, self._again.pop(key))

    def close(self) -> None:
        """Shutting down: every waiting `get` returns None now, and every later one."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def waited(self) -> float:
        """How long the key queued longest has waited for a worker (0 when none waits)."""
        with self._cond:
            return time.monotonic() - min(self._since.values()) if self._since else 0.0

    def __len__(self) -> int:
        with self._cond:
            return len(self._queued)

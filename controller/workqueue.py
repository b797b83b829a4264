"""The operator's work queue: which FailoverPlans wait for a worker, each at most once.

Client-go's rules, which the operator's workers rely on: a key is queued once however
often it is added (a watch event, the ticker, probe news); a key being processed is never
handed to a second worker, and one added meanwhile is queued again when its worker is
done, so no change is lost and one plan is never reconciled twice at once. `waited()` is
the operator's liveness signal: how long the oldest key has waited for a worker.
`close()` wakes every waiting worker at once (shutdown), so workers can wait long
between keys instead of polling: dozens of idle workers cost nothing.
"""

from __future__ import annotations

import collections
import threading
import time


class WorkQueue:
    """Deduplicating keys; a key being processed is never handed to a second worker."""

    def __init__(self) -> None:
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()
        self._busy: set[str] = set()
        self._since: dict[str, float] = {}  # key -> time.monotonic() it was queued
        self._cond = threading.Condition()
        self._closed = False

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._busy:
                self._queue.append(key)
                self._since[key] = time.monotonic()
                self._cond.notify()

    def get(self, timeout: float) -> str | None:
        """The next key, waiting at most `timeout` seconds; None when none came or the
        queue is closed."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            if not self._queue or self._closed:
                return None
            key = self._queue.popleft()
            self._since.pop(key, None)
            self._dirty.discard(key)
            self._busy.add(key)
            return key

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            if key in self._dirty:  # changed while we worked on it: once more
                self._queue.append(key)
                self._since[key] = time.monotonic()
                self._cond.notify()

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
            return len(self._queue)

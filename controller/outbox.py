"""Notices off the step path: the outbox a controller's decided notices wait in, and the
threads that deliver them.

Why it exists: a notifier may take its whole deadline (a webhook answering one byte a
second, an SMTP relay that stalls), and the first step of a failover must not wait for
the "failover started" notice, nor any step for any notice. So the engine only
*decides* a notice: it writes it to the journal's audit as `notify-pending` (durable
before anyone is told, see `controller.notices`), hands it here, and goes straight on
with its steps. The outbox then delivers it:

- **One lane per notifier** (a queue and a daemon thread): a slow or dead destination
  delays only its own notices, never another route's and never a step. A lane sends
  its notices in the order they were decided; its thread exists only while it has work.
- **Audited as before**: each delivery is written as `notify` or `notify-failed` with
  the notice's key, so `notices.undelivered` tells a restarted controller what is left.
- **Only by the lease holder** (`may_send`, checked before each send): a controller that
  lost the plan stops sending (its successor replays what is left from the journal) and
  picks up again once it holds the lease again (`wake`).
- **Flushed on the way out**: `flush(timeout)` waits until every lane is done, so a
  process that exits (the CLI after a run, `Engine.release`, and at interpreter exit)
  lets its last notices go out first. Whatever is still queued then stays
  `notify-pending` in the journal and is sent by the next controller of the plan.

A thread rather than "the engine's next tick": a tick runs steps too, so a notice sent
there would again stand in front of a step, and the next tick may be seconds away; a
lane starts sending the moment the notice is decided.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from controller import notices
from controller.journal import Journal, Run
from controller.model import Notice
from controller.notify import Notifier
from controller.plan import Notification
from controller.secrets import redact

log = logging.getLogger(__name__)
EXIT_WAIT = 10.0  # at interpreter exit, how long the last notices may still take


@dataclass(frozen=True)
class Item:
    """One decided notice for one route: the run it is about (for the `within` verdict,
    judged when it is sent), the route, its dedup key and the notice as composed."""

    run: Run
    rule: Notification
    key: str
    notice: Notice


@dataclass(eq=False)
class _Lane:
    name: str
    items: deque[Item] = field(default_factory=deque)
    thread: threading.Thread | None = None
    paused: bool = False  # the lease was not ours at the last try: wait for `wake`


class Outbox:
    """The notices one engine decided and has not delivered yet; see the module doc."""

    def __init__(self, plan: str, journal: Journal, notifier: Callable[[str], Notifier], *,
                 now: Callable[[], float], may_send: Callable[[], bool]):
        self.plan, self.journal = plan, journal
        self._notifier, self._now, self._may_send = notifier, now, may_send
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self.known: set[str] = set()  # keys handed to this outbox, sent or not
        self.token: int | None = None  # the engine's lease token at its last replay
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"Outbox({self.plan}: {self.pending()} pending)"

    def put(self, item: Item) -> None:
        """Queue a decided (and already recorded) notice; its lane starts at once."""
        with self._cond:
            if item.key in self.known:
                return
            self.known.add(item.key)
            lane = self._lanes.setdefault(item.rule.notifier, _Lane(item.rule.notifier))
            lane.items.append(item)
            self._start(lane)

    def wake(self) -> None:
        """The engine holds the lease (again): lanes that paused for it go on."""
        with self._cond:
            for lane in self._lanes.values():
                lane.paused = False
                self._start(lane)

    def pending(self) -> int:
        with self._cond:
            return sum(len(lane.items) for lane in self._lanes.values())

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no lane is sending; True if nothing is left.
        A lane paused for the lease does not hold this up: its notices stay recorded."""
        with self._cond:
            self._cond.wait_for(lambda: all(lane.thread is None
                                            for lane in self._lanes.values()), timeout)
            return not any(lane.items for lane in self._lanes.values())

    # --- the lanes ------------------------------------------------------------------------

    def _start(self, lane: _Lane) -> None:  # with self._cond held
        if lane.thread is None and lane.items and not lane.paused:
            lane.thread = threading.Thread(target=self._drain, args=(lane,), daemon=True,
                                           name=f"notices {self.plan}/{lane.name}")
            lane.thread.start()

    def _drain(self, lane: _Lane) -> None:
        while True:
            with self._cond:
                if not lane.items or lane.paused:
                    lane.thread = None
                    self._cond.notify_all()
                    return
                item = lane.items[0]
            sent = self._send(item)
            with self._cond:
                if sent:
                    lane.items.popleft()
                else:
                    lane.paused = True
                self._cond.notify_all()

    def _send(self, item: Item) -> bool:
        """Deliver one notice and audit the outcome; False if it may not be sent now."""
        try:
            allowed = self._may_send()
        except Exception as exc:  # cannot tell whether we hold the lease: do not send
            log.warning("notices of %s wait: cannot read the plan's lease: %s", self.plan,
                        redact(str(exc)))
            allowed = False
        if not allowed:
            log.info("notices of %s wait: this controller does not hold the plan's lease "
                     "(its holder sends them from the journal)", self.plan)
            return False
        where = notices.route(item.rule)
        try:
            self._notifier(item.rule.notifier).send(notice=item.notice)
            action = "notify"
            detail = where + notices.within(item.rule, item.run, self._now())
        except Exception as exc:  # a failed notice is recorded; it never stops anything
            error = redact(str(exc)) or type(exc).__name__
            action, detail = "notify-failed", f"{where} failed: {error}"
            log.warning("notice %r via %s failed: %s", redact(item.notice.status),
                        item.rule.notifier, error)
        try:
            self.journal.audit(at=self._now(), actor="controller", action=action,
                               plan=self.plan, run_id=item.run.id,
                               detail=f"{detail} {notices.tag(item.key)}",
                               keep=(where, notices.tag(item.key)))  # ids, parsed back
        except Exception as exc:
            log.error("notice %s of run %s via %s was %s but could not be recorded (%s); "
                      "a restarted controller may send it again", item.key, item.run.id,
                      where, "sent" if action == "notify" else "given up", redact(str(exc)))
        return True


_LIVE: weakref.WeakSet[Outbox] = weakref.WeakSet()


def settle(timeout: float = 30.0) -> bool:
    """Wait until no outbox of this process is sending (at most `timeout` s in all);
    True if none has anything left."""
    end = time.monotonic() + timeout
    done = True
    for box in list(_LIVE):
        done = box.flush(max(0.0, end - time.monotonic())) and done
    return done


def _at_exit() -> None:
    if not settle(EXIT_WAIT):
        log.warning("exiting with notices not sent yet; they stay pending in the journal "
                    "and the next controller of the plan sends them")


atexit.register(_at_exit)

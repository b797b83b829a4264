"""The simulated clock and scheduler: one baton, many actors, a schedule from a seed.

Every simulated actor (a replica's reconcile loop, a CLI process, each step's work) is an
OS thread that runs only while it holds the baton. Every blocking point hands the baton
back: `sleep`, `wait` (a cancellable pause), `join` (waiting for a step's work) and
`checkpoint` (a zero-time yield at each backend and journal call, where a real process
could be pre-empted). The scheduler then picks the next runnable actor with a seeded
`random.Random`, or, when everyone waits, moves the simulated clock to the earliest
wake-up. Nothing else runs concurrently, so a schedule is a pure function of its seed.

**Who schedules.** There is no scheduling thread: the actor that yields runs the
scheduling step itself (`step`, the simulation's: check the invariants, fire the events
that are due, pick the next actor) and hands the baton straight to the actor picked — or
keeps it, when it picked itself (most yields: usually only one actor is runnable), so a
yield costs no thread switch at all, and a hand-over one (a lock release and acquire per
actor, no Conditions). The main thread starts the schedule (`drive`) and gets the baton
back when it is over. `run_slice` is the other way to run an actor, used to unwind a
crashed one at once and at shutdown: the caller drives it and waits until it yields.

A crash marks an actor dead: at its next yield point `Crash` (a BaseException, so no
`except Exception` in the code under test swallows it) is raised in it, and again at
every later yield, until its thread unwinds. A stall freezes an actor (a paused process)
until a given simulated time; its in-flight network writes are not actors and still land.

Threads are pooled for the whole process: a finished actor's thread parks and is reused
by the next actor (of any schedule), each actor's body running in its own
`contextvars.Context`, so nothing leaks between actors.
"""

from __future__ import annotations

import contextvars
import random
import threading
from collections.abc import Callable
from typing import Any

REAL_TIMEOUT = 20.0  # real seconds an actor may run without yielding before the harness
# gives up on it (a busy loop or a real blocking call in the code under test)
WALL_BASE = 1_700_000_000.0
MONO_BASE = 10_000.0


class Crash(BaseException):
    """Raised in a crashed replica's actors at their next yield point: the process died."""


class HarnessError(Exception):
    """The simulation itself cannot go on (an actor never yields, or runs outside it)."""


class Actor:
    """One simulated thread of control. It waits (is not runnable) until `until` (a
    simulated time), or until `work` finishes / `fence` is cancelled, whichever is first;
    `waiting` False: runnable."""

    __slots__ = (
        "ctx",
        "data",
        "dead",
        "error",
        "fence",
        "finished",
        "fn",
        "frozen_until",
        "go",
        "group",
        "id",
        "inflight",
        "name",
        "sched",
        "until",
        "value",
        "wait_fence",
        "waiting",
        "work",
    )

    def __init__(self, sched: Scheduler, name: str, fn: Callable[[], Any], group: str,
                 ctx: contextvars.Context | None):
        self.sched, self.name, self.fn, self.group = sched, name, fn, group
        self.id = sched._next_id
        sched._next_id += 1
        self.ctx = ctx if ctx is not None else contextvars.Context()
        self.waiting = False
        self.until: float | None = None
        self.work: Actor | None = None
        self.wait_fence: Any = None
        self.finished = False
        self.dead = False  # crashed: raise Crash at every yield
        self.frozen_until = 0.0  # stalled (a paused process) until this simulated time
        self.inflight = False  # a write on the network: lands whatever happens to the process
        self.value: Any = None
        self.error: BaseException | None = None
        self.go = threading.Lock()
        self.go.acquire()
        self.fence: Any = None  # the fence of the backend call it is making (attribution)
        self.data: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<{self.name}#{self.id}>"

    def ready(self, now: float) -> bool:
        if self.finished:
            return False
        if self.dead and not self.inflight:
            return True
        if self.frozen_until > now and not self.inflight:
            return False
        if not self.waiting:
            return True
        work = self.work
        if work is not None and work.finished:
            return True
        fence = self.wait_fence
        if fence is not None and fence.cancelled:
            return True
        until = self.until
        return until is not None and now >= until

    def wake_at(self, now: float) -> float | None:
        """The simulated time at which this actor becomes runnable by time alone."""
        if self.finished:
            return None
        if self.frozen_until > now and not self.inflight:
            return self.frozen_until  # then its own wait decides
        return self.until if self.waiting else None


_LOCAL = threading.local()  # .actor: the actor this OS thread runs now


class _Pooled:
    """A parked OS thread that runs one actor body after another (threads outlive
    schedules: starting one costs more than a short schedule's events)."""

    def __init__(self) -> None:
        self.actor: Actor | None = None
        self.start = threading.Lock()
        self.start.acquire()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="sim-actor")
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.start.acquire()
            actor = self.actor
            if actor is None:
                return  # shut down
            sched = actor.sched
            _LOCAL.actor = actor
            actor.go.acquire()  # wait for the baton
            try:
                if actor.dead:
                    raise Crash(f"{actor.name} crashed before it started")
                actor.value = actor.ctx.run(actor.fn)
            except BaseException as exc:  # the actor's outcome, handed to its joiner
                actor.error = exc
            finally:
                actor.finished = True
                actor.waiting = False
                _LOCAL.actor = None
                self.actor = None
                _POOL.append(self)
                sched._finished(actor)


_POOL: list[_Pooled] = []

Step = Callable[["Actor | None"], "Actor | None"]


class Scheduler:
    """Runs actors one at a time under a simulated clock; all choices from `rng`.

    `step(actor)` is called by whoever holds the baton after `actor` yielded or finished
    (None: at the start): it returns the actor to run next, or None when the schedule is
    over. It must not raise (the caller is the code under test)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.t = 0.0  # simulated seconds since the start of the schedule
        self.actors: list[Actor] = []
        self.slices = 0
        self.step: Step = lambda actor: None
        self._next_id = 1
        self._back = threading.Lock()  # a driven actor hands the baton back on this
        self._back.acquire()
        self._main = threading.Lock()  # the schedule is over: back to the main thread
        self._main.acquire()
        self._driven: Actor | None = None  # run by run_slice: yields go back to its caller
        self._stepping: Actor | None = None  # the actor whose thread runs `step` now
        self.unwind: list[Actor] = []  # crashed while stepping: runs first, until it ends

    # --- the clock, as the code under test sees it ---------------------------------------

    def now(self) -> float:
        return WALL_BASE + self.t

    def monotonic(self) -> float:
        return MONO_BASE + self.t

    def actor_or_none(self) -> Actor | None:
        actor: Actor | None = getattr(_LOCAL, "actor", None)
        return actor if actor is not None and actor.sched is self else None

    def me(self) -> Actor:
        actor = self.actor_or_none()
        if actor is None:
            raise HarnessError("a simulated blocking call was made outside any actor "
                               f"(thread {threading.current_thread().name})")
        return actor

    def sleep(self, seconds: float) -> None:
        self._block(self.t + max(float(seconds), 0.0), None, None)

    def wait(self, seconds: float, fence: Any) -> None:
        """A pause that ends early when `fence` is cancelled (fencing.Fence.pause)."""
        if fence is not None and fence.cancelled:
            self.checkpoint()
            return
        self._block(self.t + max(float(seconds), 0.0), None, fence)

    def join(self, work: Actor, timeout: float | None) -> bool:
        if not work.finished:
            until = None if timeout is None else self.t + max(float(timeout), 0.0)
            self._block(until, work, None)
        else:
            self.checkpoint()
        return work.finished

    def checkpoint(self, chance: float = 1.0) -> None:
        """A zero-time yield point: another actor may run here (the scheduler hands the
        baton on with probability `chance`; drawn from the schedule's rng, so still a pure
        function of the seed)."""
        if chance >= 1.0 or self.rng.random() < chance:
            actor = self.me()
            if actor.dead and not actor.inflight:
                raise Crash(f"{actor.name} crashed")
            self._switch(actor)
            if actor.dead and not actor.inflight:
                raise Crash(f"{actor.name} crashed")

    def _block(self, until: float | None, work: Actor | None, fence: Any) -> None:
        actor = self.me()
        if actor.dead and not actor.inflight:
            raise Crash(f"{actor.name} crashed")
        actor.until, actor.work, actor.wait_fence = until, work, fence
        actor.waiting = True
        try:
            self._switch(actor)
        finally:
            actor.waiting = False
            actor.work = actor.wait_fence = None
        if actor.dead and not actor.inflight:
            raise Crash(f"{actor.name} crashed")

    # --- the baton ------------------------------------------------------------------------

    def _switch(self, actor: Actor) -> None:
        """`actor` (this thread's) gives the baton up; returns once it has it again."""
        if self._driven is actor:
            self._back.release()
            actor.go.acquire()
            return
        nxt = self._schedule(actor)
        if nxt is actor:
            return  # picked itself: no thread switch
        self._hand(nxt)
        actor.go.acquire()

    def _finished(self, actor: Actor) -> None:
        """`actor` returned (its thread goes back to the pool): hand the baton on."""
        if self._driven is actor:
            self._back.release()
            return
        self._hand(self._schedule(actor))

    def _schedule(self, actor: Actor | None) -> Actor | None:
        """Run the simulation's step outside any actor (its events must not see the
        yielding actor, nor its context: a fence)."""
        saved = getattr(_LOCAL, "actor", None)
        _LOCAL.actor = None
        self._stepping = actor if actor is not None and not actor.finished else None
        try:
            nxt = self.step(actor)
        finally:
            self._stepping = None
            _LOCAL.actor = saved
        if nxt is not None:
            self.slices += 1
        return nxt

    def _hand(self, nxt: Actor | None) -> None:
        if nxt is None:
            self._main.release()
        else:
            nxt.go.release()

    def drive(self) -> None:
        """From the main thread: run the schedule until `step` says it is over."""
        nxt = self._schedule(None)
        if nxt is None:
            return
        self._hand(nxt)
        last = -1
        while not self._main.acquire(timeout=REAL_TIMEOUT):
            if self.slices == last:
                raise HarnessError(f"no actor yielded for {REAL_TIMEOUT:g} s of real time: "
                                   "a busy loop or a real blocking call (time.sleep, a "
                                   "socket) in the code under test")
            last = self.slices

    # --- actors ---------------------------------------------------------------------------

    def spawn(self, name: str, fn: Callable[[], Any], *, group: str,
              ctx: contextvars.Context | None = None) -> Actor:
        actor = Actor(self, name, fn, group, ctx)
        self.actors.append(actor)
        pooled = _POOL.pop() if _POOL else _Pooled()
        pooled.actor = actor
        pooled.start.release()
        return actor

    def run_slice(self, actor: Actor) -> None:
        """Drive `actor` until it yields or finishes (its yields come back here, not to the
        scheduling step)."""
        outer = self._driven
        self._driven = actor
        self.slices += 1
        actor.go.release()
        try:
            if not self._back.acquire(timeout=REAL_TIMEOUT):
                raise HarnessError(f"{actor.name} ran {REAL_TIMEOUT:g} s of real time "
                                   "without yielding: a busy loop or a real blocking call "
                                   "(time.sleep, a socket) in the code under test")
        finally:
            self._driven = outer

    def runnable(self) -> list[Actor]:
        now = self.t
        return [a for a in self.actors if a.ready(now)]

    def next_wake(self) -> float | None:
        now, best = self.t, None
        for a in self.actors:
            w = a.wake_at(now)
            if w is not None and (best is None or w < best):
                best = w
        return best

    def prune(self) -> None:
        self.actors = [a for a in self.actors if not a.finished]
        if self.unwind:
            self.unwind = [a for a in self.unwind if not a.finished]

    def kill(self, actor: Actor) -> None:
        """Crash an actor and let it unwind at once (a dead process runs no more code
        than its stack unwinding; nothing it does then reaches the world). The actor
        whose thread is scheduling cannot be driven from its own thread: it runs next,
        before anyone else, until it has unwound."""
        actor.dead = True
        if actor is self._stepping:
            if not actor.finished and actor not in self.unwind:
                self.unwind.append(actor)
            return
        guard = 0
        while not actor.finished and not actor.inflight:  # an in-flight write lands first
            guard += 1
            if guard > 1000:
                raise HarnessError(f"{actor.name} keeps running after its crash "
                                   "(it catches Crash and yields again)")
            self.run_slice(actor)

    def shutdown(self) -> None:
        """Unwind every actor still alive (their threads go back to the pool)."""
        self.unwind = []
        for actor in list(self.actors):
            if not actor.finished:
                actor.inflight = False
                self.kill(actor)

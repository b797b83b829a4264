"""The simulated world around the replicas: sites, backends with faults, the journal file.

Owns what a replica touches outside itself, and records who changed the world:

- **Backends** are the project's in-memory fakes (`controller.testing`), each replica
  reaching them through a `BackendProxy`: every call takes simulated network time (a
  yield point), fails with `ConnectionError` while the replica is cut from the backends
  or the backend is down, may be slow, and may hang (stuck before it writes, not
  cancellable: a blocking connect). A write checks the step's fence like a real backend
  (`fencing.check()`) as it is called, with no yield before (an open connection sends at
  once), and is then *in flight*: it lands after its network time even if the step is
  cancelled or the process dies meanwhile (the request has left the host). The target
  still refuses a stale token (the fakes' own rule). Sometimes the write lands and the
  answer is lost (`ConnectionError` after writing).
- **Attribution.** Each call compares the backend's state before and after; a change is a
  `WorldWrite` with the fencing token, holder and fence label ("RUN/STEP") it was made
  under, the actor and the simulated time. The invariants are checked on these.
- **What a step saw when it prepared.** A read made inside a step's `prepare` (the
  handlers' `prepare` run under `preparing()`) notes the backend's state at that moment
  under the step's label (`Sim.prepared`): after a failback, each object must be as the
  first step that wrote to it found it.
- **The journal** is one SQLite file per schedule (per worker process, emptied between
  schedules: `JournalFiles`, which also keeps the handles of processes that ended for
  the next schedule's); each replica and CLI process opens it with its own `SimJournal`
  (a connection each, like processes on one host). A public
  journal call may yield (a write transaction with odds `WRITE_YIELD`, any other call
  `READ_YIELD`), never inside a transaction; a replica cut from the lease store gets
  `ConnectionError` from every lease call; each statement's table is noted (the checker
  re-reads only what changed, and the status needs no re-read while no statement wrote
  a run, a step or the plan's state after the last listener call).
"""

from __future__ import annotations

import inspect
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from controller import fencing, registry
from controller.backends import Backends
from controller.fencing import Fence
from controller.journal import Journal
from controller.model import Sample

if TYPE_CHECKING:
    from tests.reliability.sim.harness import Replica, Sim

WRITES = frozenset({"shift", "revert", "apply", "delete", "restore", "fence", "promote",
                    "stop", "rewind", "basebackup", "follow"})
INFLIGHT_MAX = 0.3  # seconds a write spends in the network after its fence check
WRITE_YIELD = 0.5  # odds that another actor runs before a journal write transaction
READ_YIELD = 0.15  # ... before any other journal call
PREPARING: ContextVar[bool] = ContextVar("sim-preparing", default=False)
STATUS_TABLES = frozenset({"runs", "steps", "plan_state"})  # what a status shows
_WRITE_AT = {"INSERT": 2, "UPDATE": 1, "DELETE": 2, "REPLACE": 2}  # where the table is


@dataclass
class WorldWrite:
    t: float
    slice: int
    actor: str
    actor_id: int
    group: str
    backend: str
    method: str
    token: int | None
    holder: str | None
    label: str | None
    before: Any
    after: Any
    error: str | None = None


@dataclass
class Faults:
    """The backends' misbehaviour in one schedule (all drawn from its seed)."""

    slow: float = 0.0  # probability a call takes 0.5-4 s before it reaches the backend
    lost_ack: float = 0.0  # probability a write lands but its answer is lost
    down: list[tuple[str, float, float]] = field(default_factory=list)  # backend, from, to
    hangs: list[tuple[str, float, float]] = field(default_factory=list)  # stuck until `to`
    sluggish: list[tuple[str, float, float]] = field(default_factory=list)  # every call slow


class InFlight(Fence):
    """The fence of a write already sent: its check happened before it left the host, so
    it is not checked again (the target still compares tokens)."""

    def __init__(self, fence: Fence):
        super().__init__(fence.token, fence.holder, label=fence.label)

    def check(self) -> None:
        return None


class BackendProxy:
    """One replica's handle on one backend (see the module docstring)."""

    def __init__(self, sim: Sim, replica: Replica, name: str, target: Any):
        self._sim, self._replica, self._name, self._target = sim, replica, name, target

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._target, attr)
        if attr.startswith("_") or not callable(value) or attr in ("Options", "options"):
            return value
        return partial(self._call, attr, value)

    def _call(self, attr: str, method: Callable[..., Any], /, *args: Any,
              **kwargs: Any) -> Any:
        sim, sched, rng = self._sim, self._sim.sched, self._sim.rng
        actor = sched.actor_or_none()  # (each call takes network time below: a yield point)
        if actor is None:  # a helper thread of an actor (readiness checks run in a pool)
            if self._replica.cut_backends:  # while the actor waits for it: no yield here
                raise ConnectionError(f"{self._replica.name} cannot reach backend "
                                      f"{self._name} (partitioned)")
            if attr in WRITES:
                raise AssertionError(f"{self._name}.{attr} written outside a simulated actor")
            return method(*args, **kwargs)
        if actor.dead and not actor.inflight:
            sched.checkpoint()  # raises Crash
        faults = sim.faults
        for backend, start, end in faults.hangs:
            if backend == self._name and start <= sched.t < end:
                sim.trace("%s: %s.%s hangs until t=%.2f", actor.name, self._name, attr, end)
                sched.sleep(end - sched.t)  # stuck in a blocking call: not cancellable
        sluggish = any(b == self._name and start <= sched.t < end
                       for b, start, end in faults.sluggish)
        if sluggish or (faults.slow and rng.random() < faults.slow):
            sched.sleep(rng.uniform(0.5, 4.0))  # a slow connect or a busy server
        if self._replica.cut_backends:
            sched.sleep(rng.uniform(0.001, 0.05))
            raise ConnectionError(f"{self._replica.name} cannot reach backend {self._name} "
                                  "(partitioned)")
        for backend, start, end in faults.down:
            if backend == self._name and start <= sched.t < end:
                sched.sleep(rng.uniform(0.001, 0.05))
                raise ConnectionError(f"backend {self._name} is down (injected)")
        if attr not in WRITES:
            sched.sleep(rng.uniform(0.001, 0.05))  # the round trip
            if PREPARING.get():  # what the step finds before it changes anything
                fence = fencing.current()
                if fence is not None:
                    sim.prepared_read(fence.label, self._name)
            return method(*args, **kwargs)
        fencing.check()  # a real backend checks right before it sends the write
        fence = fencing.current()
        lost = bool(faults.lost_ack) and rng.random() < faults.lost_ack
        # sent: neither a crash nor a pause stops it, on the wire nor while it lands (the
        # backend's own bookkeeping, e.g. a restorer's audit, is part of the write and is
        # seen with it, at the time the world changed)
        actor.inflight = True
        try:
            sched.sleep(rng.uniform(0.001, INFLIGHT_MAX))
            result = sim.write(actor, self._name, attr, fence,
                               lambda: self._land(fence, method, args, kwargs))
        finally:
            actor.inflight = False
        if lost:
            raise ConnectionError(f"{self._name}.{attr}: the answer was lost (the write "
                                  "landed)")
        return result

    @staticmethod
    def _land(fence: Fence | None, method: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        with fencing.scope(InFlight(fence)) if fence is not None else nullcontext():
            return method(*args, **kwargs)


class ProbeProxy:
    """A probe a step runs (a stepped shift's check, a verify step): fails while the
    replica is cut from the backends."""

    def __init__(self, replica: Replica, target: Any):
        self._replica, self._target = replica, target
        self.service = getattr(target, "service", "")

    async def check(self) -> Sample:
        sample = await self._target.check()
        if self._replica.cut_backends:
            return Sample(sample.service, False, sample.at, detail="unreachable (partitioned)")
        return sample

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


class SimBackends(Backends):
    """A replica's backends: the plan's fakes behind `BackendProxy`s."""

    def __init__(self, sim: Sim, replica: Replica, audit: Callable[..., None] | None):
        super().__init__(sim.plan, audit=audit)
        self._sim, self._replica = sim, replica

    def get(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = BackendProxy(self._sim, self._replica, name,
                                             super().get(name))
        return self._built[name]

    def probe(self, owner: str, spec: Any) -> Any:
        return ProbeProxy(self._replica, super().probe(owner, spec))


@contextmanager
def preparing() -> Iterator[None]:
    """While a schedule runs: the reads each traffic and DNS step makes in `prepare` are
    noted (`PREPARING`), so the checker knows what the step saw before it wrote."""
    from controller.registry import STEP_KINDS as HANDLERS

    saved = []
    for action in ("traffic", "dns"):
        handler = HANDLERS[action]
        saved.append(handler)
        original = handler.prepare

        def prepare(step: Any, ctx: Any, original: Callable[..., Any] = original) -> Any:
            reset = PREPARING.set(True)
            try:
                return original(step, ctx)
            finally:
                PREPARING.reset(reset)

        handler.prepare = prepare  # type: ignore[method-assign]
    try:
        yield
    finally:
        for handler in saved:
            del handler.prepare


def fingerprint(target: Any, role: str) -> Any:
    """The state of one fake, comparable and hashable (read with no fence, no yield)."""
    if role == "traffic":
        return tuple(sorted(target.current().items()))
    if role == "dns":
        return tuple((r.name, r.type, r.ttl, r.values) for r in target.records())
    if role == "restorer":
        return len(target.restored())
    if role == "database":  # each node: (name, running, in recovery, read-only, fenced by,
        # timeline: a rewind or base backup moves a node onto another's)
        return tuple((name, n["running"], n["recovery"], n["readOnly"], n["fenced"],
                      n["timeline"]) for name, n in sorted(target.nodes().items()))
    return None


def writable(database: Any) -> list[str]:
    """The nodes of a database fingerprint that would accept writes (reachable or not:
    a primary cut off from us still takes its own clients' writes)."""
    return [name for name, running, recovery, read_only, _, _ in database
            if running and not recovery and not read_only]


class RawBackends:
    """The sim's own unproxied view of the plan's world-changing backends."""

    def __init__(self, plan: Any):
        self.roles: dict[str, str] = {}
        self.fakes: dict[str, Any] = {}
        for spec in plan.spec.backends:
            if spec.role in ("traffic", "dns", "restorer", "database"):
                self.roles[spec.name] = spec.role
                self.fakes[spec.name] = registry.build(spec.role, spec.kind, spec.options,
                                                       secrets=None)

    def state(self, name: str) -> Any:
        return fingerprint(self.fakes[name], self.roles[name])

    def world(self) -> dict[str, Any]:
        """Traffic and DNS as they are now (a restore or a promotion is not undone by a
        failback)."""
        return {n: self.state(n) for n, r in self.roles.items()
                if r not in ("restorer", "database")}


# --- the journal ------------------------------------------------------------------------


class _SimJournalBase(Journal):
    """Yield points: before each write transaction and each other public call (a read that
    another process's write may overtake), taken with the odds `WRITE_YIELD` and
    `READ_YIELD`; lease calls fail while cut off."""

    _sim: Sim | None = None
    _replica: Replica | None = None
    _depth: dict[int, int]

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        sim = self._sim
        if sim is not None and not self._lock._is_owned():  # type: ignore[attr-defined]
            sim.sched.checkpoint(WRITE_YIELD)  # another process may write first
        with Journal._tx(self, durable=durable) as db:
            yield db


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    lease = "lease" in name
    get_ident = threading.get_ident

    def method(self: _SimJournalBase, *args: Any, **kwargs: Any) -> Any:
        sim = self._sim
        if sim is None:
            return fn(self, *args, **kwargs)
        ident = get_ident()
        depth = self._depth
        outer = depth.get(ident, 0)
        if not outer:  # a public call made by the caller, not by another public call
            if not self._lock._is_owned():  # type: ignore[attr-defined]
                sched = sim.sched
                if sched.rng.random() < READ_YIELD:
                    sched.checkpoint()
            replica = self._replica
            if lease and replica is not None and replica.cut_lease:
                raise ConnectionError(f"{replica.name} cannot reach the lease store "
                                      "(partitioned)")
        depth[ident] = outer + 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            depth[ident] = outer

    method.__name__ = name
    method.__doc__ = fn.__doc__
    return method


SimJournal: type[_SimJournalBase] = type("SimJournal", (_SimJournalBase,), {
    name: _wrap(name, fn) for name, fn in inspect.getmembers(Journal, inspect.isfunction)
    if not name.startswith("_") and name != "close"})


def written_table(statement: str) -> str | None:
    """The table a write statement changes (None for a read, BEGIN, COMMIT, PRAGMA...).
    Statements arrive expanded (values inlined), so they are parsed, not looked up."""
    if not statement or statement[0] not in "IUDRiudr":
        return None
    words = statement.split(None, 5)
    at = _WRITE_AT.get(words[0].upper())
    if at is None:
        return None
    if words[0].upper() == "INSERT" and words[1].upper() == "OR":
        at = 4  # INSERT OR REPLACE INTO t
    if len(words) <= at:
        return None
    return words[at].split("(", 1)[0].lower()


def open_journal(sim: Sim, path: str, replica: Replica | None) -> _SimJournalBase:
    journal = SimJournal(path)
    journal._db.execute("PRAGMA synchronous=OFF")  # durability against power loss is not
    # what the simulation tests (a crash here is a process dying: commits survive it)
    _attach(journal, sim, replica)
    return journal


def _attach(journal: _SimJournalBase, sim: Sim, replica: Replica | None) -> None:
    journal._depth = {}
    journal._db.set_trace_callback(sim.on_sql)  # which tables each process writes
    journal._sim = sim
    journal._replica = replica


# --- one journal file per process, its connections kept between schedules ------------------

_JOURNAL_ATTRS = frozenset({"path", "_lock", "listeners", "_open_fd", "_finalizer", "_db",
                            "_depth", "_sim", "_replica"})


class JournalFiles:
    """The journal file a process's schedules run on, one after another, and the
    connections kept open on it between them: opening a connection on a WAL database
    costs ~0.4 ms (its first statement maps the WAL index), several times per schedule.

    `reset` empties every table (and the AUTOINCREMENT counters), which leaves the file as
    the template was: a fresh journal, as far as any query can tell. A `Journal` is kept
    only when nothing can use it any more (its process's actors have all finished), it is
    in no transaction, and it holds no state but what `Journal` had when this was written
    (`_JOURNAL_ATTRS`: a journal that caches anything is closed, not kept)."""

    def __init__(self, path: str):
        self.path = path
        self.journals: list[_SimJournalBase] = []
        self.connections: list[sqlite3.Connection] = []
        self._tables: list[str] | None = None

    def reset(self) -> None:
        db = self.connection()
        try:
            if self._tables is None:
                self._tables = [r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN "
                    "('meta', 'sqlite_sequence') ORDER BY name")]
            db.execute("BEGIN IMMEDIATE")
            for table in self._tables:
                db.execute(f"DELETE FROM {table}")
            if db.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'"
                          ).fetchone():
                db.execute("DELETE FROM sqlite_sequence")
            db.execute("COMMIT")
        finally:
            self.give_back(db)

    def journal(self, sim: Sim, replica: Replica | None) -> _SimJournalBase:
        if self.journals:
            journal = self.journals.pop()
            _attach(journal, sim, replica)
            return journal
        return open_journal(sim, self.path, replica)

    def done(self, journal: _SimJournalBase) -> None:
        """A process has ended and none of its actors runs: keep its journal, or close it."""
        db = journal._db
        try:
            usable = (set(vars(journal)) <= _JOURNAL_ATTRS and not db.in_transaction
                      and journal._lock.acquire(blocking=False))
        except sqlite3.ProgrammingError:  # closed
            return
        if usable:
            journal._lock.release()
            db.set_trace_callback(None)
            journal._sim = journal._replica = None
            journal.listeners.clear()
            self.journals.append(journal)
        else:
            with suppress(sqlite3.Error):
                db.close()

    def close(self) -> None:
        for journal in self.journals:
            with suppress(sqlite3.Error):
                journal.close()
        for db in self.connections:
            db.close()
        self.journals, self.connections = [], []

    def connection(self) -> sqlite3.Connection:
        if self.connections:
            return self.connections.pop()
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def give_back(self, db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.ProgrammingError:  # closed
            return
        self.connections.append(db)

"""One simulated schedule: replicas, CLI processes, faults and requests, from one seed.

`run_schedule(seed)` draws a `Schedule` from the seed (the plan variant, how many
replicas, when the primary fails and recovers (sometimes with its database host),
crashes, restarts, stalls, partitions, slow/hanging/down backends, CLI requests, a
person's edit during the incident), runs it under the simulated scheduler and returns a
`Result`: the violations found by the invariants after every event (the run stops at the
first), counts, and the last events.

The actors, as the real processes do them:
- a **replica** (`failoverctl run` / the operator's loop): every tick, probe samples
  from the simulated world (`Sample(service, ok, at=now)`, ok when the site that carries
  the most traffic is up; all failing while the replica is cut from the backends) fed to
  the real `Engine.tick` (while its probe loop is late, `Schedule.late`, an overloaded
  controller, each failure is a timeout the stall explains: inconclusive, and excused by
  the probe scheduler's own bound, `excuse`: at most consecutiveFailures since the last
  good sample, so protection may wait that many ticks more); each with its own `Journal`
  on the schedule's SQLite file and its own handles on the backends. A crash kills its
  loop and its in-flight step work at their next yield point; an error that ends
  `failoverctl run` (a connection error out of the tick) ends the process the same way.
  A supervisor restarts it later, sometimes under the same holder name (a pod keeps its
  name), usually under a new one.
- a **CLI process** (`failoverctl failover|failback|approve|done` on a plan file):
  the same calls as `controller.cli` makes — request, reconcile until picked up, follow
  by reconciling until the run ends or waits; approve the waiting run or step; say done
  for the open human step (for `fence-primary`, or a promote step that asks for a
  person, the person first powers off the old primary database: a write with no fence,
  like a person's edit) — then `release`.
- **step work**: each attempt the executor spawns (`Engine(spawn=...)`).
- the **coordinator** (`kind: etcd` in a multi-host deployment), when the schedule uses
  one: a lease with a TTL on the simulated clock and a token that only grows; a replica
  can be cut from it.

Between two actors' turns, `Sim._step` (run by whichever thread yields: see `scheduler`)
checks the invariants, fires the events that are due (each outside any actor's context,
so a person's edit carries no step's fence) and picks who runs next. The trace keeps
`(time, event, format, args)` and is formatted only when read (a report, a replay); the
code of a crashed process that still unwinds (a `finally` reaching its closed journal) is
its crash, not an engine error.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import random
import shutil
import sqlite3
import tempfile
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import controller.fencing
import controller.journal
import controller.notices
import controller.readiness
import controller.steps.db_failback
import controller.steps.promote
import controller.steps.restore
import controller.steps.traffic
import controller.testing
from controller import testing
from controller.clock import Clock
from controller.fencing import LostLease
from controller.journal import Journal
from controller.loop import Engine
from controller.model import Phase, Sample, StepStatus
from controller.probes.scheduler import excuse
from tests.reliability.sim import plans
from tests.reliability.sim.scheduler import Actor, Crash, HarnessError, Scheduler
from tests.reliability.sim.world import (
    STATUS_TABLES,
    Faults,
    JournalFiles,
    RawBackends,
    SimBackends,
    WorldWrite,
    open_journal,
    preparing,
    written_table,
)

SHM = Path("/dev/shm")
ENV_ERRORS = (ConnectionError, TimeoutError, OSError, sqlite3.OperationalError, LostLease)
MAX_SLICES = 20_000  # a schedule that needs more has an actor spinning without time passing
TRACE_LEN = 200
CLI_POLL = 1.0  # seconds between a CLI's reconciles while it waits or follows (0.2 s in
# the real CLI: the same calls, fewer of them)
CLIENT_EVERY = 0.7  # seconds between the application's commits to the database nodes


class Violation(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


# --- the schedule -------------------------------------------------------------------------


@dataclass
class Schedule:
    seed: int
    plan_key: tuple[str, bool, bool, bool]
    replicas: int
    horizon: float
    lease_ttl: float
    coordinator: bool
    outages: list[tuple[float, float]]
    crashes: list[tuple[float | None, int | None, str]]  # (time, slice, whom)
    restart: tuple[float, float] | None  # delay range; None: no restarts
    same_name: float  # probability a restarted replica keeps its holder name
    stalls: list[tuple[float, str, float]]  # (time, whom, seconds)
    partitions: list[tuple[float, float, str, str]]  # (from, to, whom, "backends"|"lease"|"both")
    clis: list[tuple[float, str]]  # (time, failover|failback|approve|done)
    person: list[float]  # times a person edits the traffic weights by hand
    faults: Faults
    clear_after: int = 1  # the trigger's clearAfter
    db_lost: bool = False  # the old primary database's host goes down with dc-a
    prepare: Callable[[Sim], None] | None = None  # before the replicas start (scenarios)
    # (from, to, whom): the replica's probe loop is late, its failed probes inconclusive
    late: list[tuple[float, float, str]] = field(default_factory=list)
    name: str = ""  # a scenario test's name: replayed by running that test

    def describe(self) -> str:
        shape, short, revert, back = self.plan_key
        return (f"plan {shape} timeout {'short' if short else 'long'} onFailure "
                f"{'revert' if revert else 'abort'}{' automaticFailback' if back else ''} "
                f"clearAfter {self.clear_after}; "
                f"{self.replicas} replicas, lease {self.lease_ttl:g} s"
                f"{', coordinator' if self.coordinator else ''}; horizon {self.horizon:g} s; "
                f"outages {_fmt(self.outages)}; crashes {self.crashes}; restart "
                f"{self.restart}; stalls {self.stalls}; partitions {self.partitions}; "
                f"late probe loop {self.late}; "
                f"CLI {self.clis}; person {self.person}; "
                f"{'database host lost with dc-a; ' if self.db_lost else ''}"
                f"faults slow {self.faults.slow:.2f} "
                f"lostAck {self.faults.lost_ack:.2f} down {self.faults.down} sluggish "
                f"{self.faults.sluggish} hangs {self.faults.hangs}")


def _fmt(spans: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a:.1f}-{b:.1f}" for a, b in spans) or "none"


def draw(seed: int) -> Schedule:
    """The schedule of one seed: short, each fault with its own odds."""
    rng = random.Random(f"schedule:{seed}")
    key = plans.KEYS[rng.randrange(len(plans.KEYS))]
    horizon = rng.uniform(10.0, 20.0) if rng.random() < 0.8 else rng.uniform(30.0, 40.0)
    ttl = rng.choice([3.0, 6.0, 9.0])
    start = rng.uniform(0.0, 2.0)
    outages = [(start, start + rng.uniform(4.0, 40.0) if rng.random() < 0.7 else 1e9)]
    if rng.random() < 0.2:  # it comes back, then fails again
        again = outages[0][1] + rng.uniform(2.0, 10.0)
        outages.append((again, again + rng.uniform(3.0, 20.0)))
    whom = ["r1", "r2", "r3", "holder"]
    crashes: list[tuple[float | None, int | None, str]] = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        if rng.random() < 0.5:
            crashes.append((rng.uniform(0, horizon), None, rng.choice(whom)))
        else:  # at a random event: between two journal calls, mid-step
            crashes.append((None, rng.randrange(10, 150), rng.choice(whom)))
    stalls = [(rng.uniform(0, horizon), rng.choice(whom), rng.uniform(1.0, 2.5 * ttl))
              for _ in range(1 if rng.random() < 0.15 else 0)]
    partitions = []
    if rng.random() < 0.25:
        t0 = rng.uniform(0, horizon)
        partitions.append((t0, t0 + rng.uniform(1.0, 20.0), rng.choice(whom),
                           rng.choice(["backends", "lease", "both"])))
    clis: list[tuple[float, str]] = []
    shape = key[0]
    human = shape in ("manual", *plans.ASKING)
    kinds = ["failover", "failback", "failback", "approve", "done"] if human \
        else ["failover", "failback", "failback"]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        clis.append((rng.uniform(0, horizon), rng.choice(kinds)))
    if human:  # people answer the approvals and human steps, at random moments
        answers = ["approve", "approve", "done"] if shape == "manual" else ["done"]
        clis += [(rng.uniform(start, horizon), rng.choice(answers))
                 for _ in range(rng.choice([1, 2, 3]))]
    backends = ["edge", "zone"] + (["db"] if shape == "restore" else []) + (
        ["pg"] if shape in plans.PROMOTING else [])
    faults = Faults(
        slow=rng.choice([0.0, 0.0, 0.05, 0.2]),
        lost_ack=rng.choice([0.0, 0.0, 0.0, 0.1]),
    )
    if rng.random() < 0.2:
        t0 = rng.uniform(0, horizon)
        faults.down.append((rng.choice(backends), t0, t0 + rng.uniform(1.0, 15.0)))
    if rng.random() < 0.15:
        t0 = rng.uniform(0, horizon)
        faults.sluggish.append((rng.choice(backends), t0, t0 + rng.uniform(2.0, 15.0)))
    if rng.random() < 0.2:
        t0 = rng.uniform(0, horizon)
        faults.hangs.append((rng.choice(backends), t0, t0 + rng.uniform(1.0, 3.0 * ttl)))
    # an overloaded controller: a stream of its own, so every other draw stays as it was
    overload = random.Random(f"late:{seed}")
    late = []
    if overload.random() < 0.3:
        t0 = overload.uniform(0.0, horizon)
        late.append((t0, t0 + overload.uniform(2.0, 30.0),
                     overload.choice(["r1", "r2", "r3"])))
    return Schedule(
        seed=seed, plan_key=key, replicas=rng.choice([1, 2, 2, 3]), horizon=horizon,
        lease_ttl=ttl, coordinator=rng.random() < 0.4, outages=outages, crashes=crashes,
        restart=(0.5, 8.0) if rng.random() < 0.85 else None, same_name=0.3, stalls=stalls,
        partitions=partitions, clis=sorted(clis),
        person=[rng.uniform(start, horizon)] if rng.random() < 0.1 else [], faults=faults,
        clear_after=rng.choice([1, 1, 3]),
        db_lost=shape in plans.PROMOTING and rng.random() < 0.5, late=late)


# --- the actors ----------------------------------------------------------------------------


@dataclass
class Replica:
    name: str  # r1, r2... (the slot); cli-N for a CLI process
    holder: str
    group: str  # the process: its actors live and die together
    kind: str = "replica"
    alive: bool = True
    cut_backends: bool = False
    cut_lease: bool = False
    journal: Any = None
    engine: Any = None
    loop: Actor | None = None
    incarnation: int = 1
    excused: dict[str, int] = field(default_factory=dict)  # inconclusive, per service


class SimWork:
    """`executor.Work` for a step's work running as a simulated actor."""

    def __init__(self, sched: Scheduler, actor: Actor):
        self.sched, self.actor = sched, actor

    def join(self, timeout: float) -> bool:
        return self.sched.join(self.actor, timeout)

    def outcome(self) -> Any:
        if self.actor.error is not None:
            raise self.actor.error
        return self.actor.value


@dataclass
class Lease:
    """The simulated coordinator's one lease (simulated seconds)."""

    holder: str | None = None
    token: int = 0
    expires: float = 0.0


class SimCoordinator:
    """One process's client of the simulated coordinator (an etcd-like lease): the token
    grows with every new holder, the lease lapses `ttl` simulated seconds after its last
    renewal, and a process cut from it gets `ConnectionError` (as CoordinationError is)."""

    def __init__(self, sim: Sim, replica: Replica):
        self.sim, self.replica = sim, replica

    def acquire(self, *, holder: str, ttl: float) -> int | None:
        sim = self.sim
        sim.sched.sleep(sim.rng.uniform(0.001, 0.02))
        if self.replica.cut_lease:
            raise ConnectionError(f"{self.replica.name} cannot reach the coordinator "
                                  "(partitioned)")
        lease = sim.lease
        now = sim.sched.t
        if lease.holder not in (None, holder) and lease.expires > now:
            return None
        if lease.holder != holder:
            lease.token += 1
            lease.holder = holder
            sim.trace("coordinator: %s takes the lease, token %d", holder, lease.token)
        lease.expires = now + ttl
        return lease.token

    def release(self, *, holder: str) -> None:
        sim = self.sim
        sim.sched.checkpoint()
        if self.replica.cut_lease:
            raise ConnectionError(f"{self.replica.name} cannot reach the coordinator")
        if sim.lease.holder == holder:
            sim.lease.holder = None
            sim.lease.expires = 0.0
            sim.trace("coordinator: %s released the lease", holder)

    def describe(self) -> str:
        return "the simulated coordinator"


# --- determinism: the code under test's own clocks and ids ------------------------------


class _SimTime(SimpleNamespace):
    pass


@contextmanager
def patched(sim: Sim) -> Iterator[None]:
    """Module-level clocks and random ids of the code under test follow the schedule."""
    import time as real_time

    fake = _SimTime(time=sim.sched.now, monotonic=sim.sched.monotonic, sleep=sim.sched.sleep,
                    strftime=real_time.strftime, gmtime=real_time.gmtime,
                    perf_counter=real_time.perf_counter, localtime=real_time.localtime)
    ids = random.Random(f"uuid:{sim.schedule.seed}")
    fake_uuid = SimpleNamespace(uuid4=lambda: uuid.UUID(int=ids.getrandbits(128), version=4))
    saved = []
    for module in (controller.steps.traffic, controller.steps.restore,
                   controller.steps.promote, controller.steps.db_failback, controller.testing,
                   controller.fencing, controller.notices, controller.readiness):
        saved.append((module, "time", module.time))
        setattr(module, "time", fake)  # noqa: B010 (a module's global, for this schedule)
    saved.append((controller.journal, "uuid", controller.journal.uuid))
    setattr(controller.journal, "uuid", fake_uuid)  # noqa: B010
    log = logging.getLogger("controller")  # its warnings go into the schedule's trace
    kept = (log.level, log.propagate, list(log.handlers))
    handler = _TraceHandler(sim)
    log.setLevel(logging.WARNING)
    log.propagate = False
    log.handlers = [handler]
    try:
        with preparing():
            yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        log.setLevel(kept[0])
        log.propagate = kept[1]
        log.handlers = kept[2]


class _TraceHandler(logging.Handler):
    def __init__(self, sim: Sim):
        super().__init__(logging.WARNING)
        self.sim = sim

    def emit(self, record: logging.LogRecord) -> None:
        actor = self.sim.sched.actor_or_none()
        who = actor.name if actor is not None else "sim"
        self.sim.trace("%s: log %s: %.300s", who, record.levelname, record.getMessage())


# --- the simulation ----------------------------------------------------------------------

TraceEntry = tuple[float, int, str, tuple[Any, ...]]


def format_trace(entries: Iterable[TraceEntry]) -> list[str]:
    """The trace's lines, formatted only when someone reads them (a violation's report,
    a replay, a test): the simulation keeps `(t, event, format, args)` tuples."""
    return [f"t={t:7.3f} #{n:<5} {text % args if args else text}"
            for t, n, text, args in entries]


@dataclass
class Result:
    seed: int
    violation: Violation | None
    slices: int
    sim_seconds: float
    writes: int
    runs: int
    raw_trace: list[TraceEntry]
    plan: Schedule
    counts: dict[str, int] = field(default_factory=dict)
    name: str = ""
    # with `capture`: every world write, every step status change, the journal at the end
    writes_log: list[WorldWrite] = field(default_factory=list)
    history: list[tuple[float, str, str, str | None, str]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trace(self) -> list[str]:
        return format_trace(self.raw_trace)

    @property
    def schedule(self) -> str:
        return self.plan.describe()

    def report(self) -> str:
        assert self.violation is not None
        trace = self.trace
        lines = [f"simulated schedule {self.seed} violated an invariant: {self.violation}",
                 f"schedule: {self.schedule}",
                 f"last {len(trace)} events:"]
        lines += [f"  {line}" for line in trace]
        if self.name:
            lines.append(f"replay: .venv/bin/python -m pytest "
                         f"tests/reliability/test_simulation.py -k {self.name} (scheduling "
                         f"seed {self.seed})")
        else:
            lines.append(f"replay: FAILOVER_SIM_SEED={self.seed} .venv/bin/python -m pytest "
                         "tests/reliability/test_simulation.py")
        return "\n".join(lines)


class Sim:
    """One schedule's world, processes and checker; `run()` plays it to its horizon (or
    the first violation) and returns the `Result`. With `capture`, the result also holds
    every world write, every step status change and the journal's runs at the end."""

    def __init__(self, schedule: Schedule, *, workdir: Path | None = None,
                 capture: bool = False):
        from tests.reliability.sim.invariants import Checker

        self.schedule = schedule
        self.capture = capture
        self.writes_log: list[WorldWrite] = []
        self.rng = random.Random(f"run:{schedule.seed}")
        self.sched = Scheduler(self.rng)
        self.sched.step = self._step
        self.plan = plans.plan_for(schedule.plan_key, schedule.clear_after)
        self.faults = schedule.faults
        self.clock = Clock(now=self.sched.now, sleep=self.sched.sleep,
                           monotonic=self.sched.monotonic, wait=self.sched.wait)
        self._trace: deque[TraceEntry] = deque(maxlen=TRACE_LEN)
        self.writes: list[WorldWrite] = []  # this slice's, for the checker
        self.n_writes = 0
        self.replicas: dict[str, Replica] = {}
        self.processes: list[Replica] = []
        self._by_group: dict[str, Replica] = {}
        self.lease = Lease()
        self.primary_up = True
        self._serving: str | None = None
        self.dirty: set[str] = set()  # journal tables written since the checker looked
        # the status: statements that wrote a run, a step or the plan's state, and how
        # many there had been at the last listener call (the status mirrors the journal
        # then; `mirror_status` reads what it showed)
        self.status_seq = 0
        self.mirror_seq = 0
        self._mirror: sqlite3.Connection | None = None
        self.prepared: dict[str | None, dict[str, Any]] = {}  # label -> backend -> state
        self.violation: Violation | None = None
        self.counts: dict[str, int] = {"crashes": 0, "restarts": 0, "exits": 0, "cli": 0,
                                       "stalls": 0, "partitions": 0}
        if workdir is None:  # the process's journal file, emptied
            self.files = _files()
        else:
            path = workdir / f"journal-{schedule.seed}-{next(_SERIAL)}.db"
            shutil.copyfile(_template(), path)
            self.files = JournalFiles(str(path))
        self.path = self.files.path
        self._cli_n = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []  # a heap
        self._slice_events: list[tuple[int, Callable[[], None]]] = []
        self._seq = 0
        self._exits: list[tuple[Replica, str]] = []
        testing.reset()
        self.raw = RawBackends(self.plan)
        self.checker = Checker(self)

    # --- trace ------------------------------------------------------------------------------

    def trace(self, text: str, *args: Any) -> None:
        """Note an event: `text % args`, formatted only if the trace is read (pass values
        that do not change later: strings, numbers, tuples)."""
        self._trace.append((self.sched.t, self.sched.slices, text, args))

    def trace_lines(self) -> list[str]:
        return format_trace(self._trace)

    # --- the world --------------------------------------------------------------------------

    def samples(self, replica: Replica) -> list[Sample]:
        now, t = self.sched.now(), self.sched.t
        late = any(a <= t < b and whom == replica.name for a, b, whom in self.schedule.late)
        if replica.cut_backends:
            raw = [Sample(s.name, False, now, detail="unreachable (partitioned)",
                          inconclusive=late) for s in self.plan.spec.services]
        else:
            ok = self.serving_ok()
            raw = [Sample(s.name, ok, now, detail="" if ok else "HTTP 503",
                          inconclusive=late and not ok) for s in self.plan.spec.services]
        out = []
        for sample in raw:  # as the probe scheduler hands them over
            judged, replica.excused[sample.service] = excuse(
                sample, replica.excused.get(sample.service, 0),
                self.plan.spec.trigger.consecutive_failures)
            out.append(judged)
        return out

    def serving_site(self) -> str:
        if self._serving is None:
            weights = dict(self.raw.state("edge"))
            self._serving = max(sorted(weights), key=lambda k: weights[k])
        return self._serving

    def serving_ok(self) -> bool:
        """Does the service answer: is the site that carries the most traffic up?"""
        return self.primary_up or self.serving_site() != "dc-a"

    def prepared_read(self, label: str | None, backend: str) -> None:
        """A step's `prepare` reads `backend` now: what it finds (the latest prepare of a
        step counts: an earlier one whose evidence was never saved is read again)."""
        self.prepared.setdefault(label, {})[backend] = self.raw.state(backend)

    def write(self, actor: Actor, backend: str, method: str, fence: Any,
              do: Callable[[], Any]) -> Any:
        """Make a write and record it when it changed the backend's state."""
        before = self.raw.state(backend)
        error: BaseException | None = None
        try:
            result = do()
        except BaseException as exc:  # recorded, then raised to the caller
            error = exc
        after = self.raw.state(backend)
        self._serving = None
        token = None if fence is None else fence.token
        holder = None if fence is None else fence.holder
        label = None if fence is None else fence.label
        if after != before:
            self.n_writes += 1
            self.writes.append(WorldWrite(self.sched.t, self.sched.slices, actor.name,
                                          actor.id, actor.group, backend, method, token,
                                          holder, label, before, after,
                                          None if error is None else repr(error)))
            if self.capture:
                self.writes_log.append(self.writes[-1])
            self.trace("%s: WRITE %s.%s token=%s holder=%s label=%s: %s -> %s", actor.name,
                       backend, method, token, holder, label, before, after)
        else:
            self.trace("%s: %s.%s token=%s label=%s changed nothing%s", actor.name, backend,
                       method, token, label, "" if error is None else f" ({error!r})")
        if error is not None:
            raise error
        return result

    def person_edit(self) -> None:
        """Someone changes the weights by hand during the incident (no fence)."""
        fake = self.raw.fakes["edge"]
        before = self.raw.state("edge")
        weights = {"dc-a": 30, "dc-b": 70} if dict(before).get("dc-b", 0) != 70 \
            else {"dc-a": 60, "dc-b": 40}
        fake.revert(to=weights)
        after = self.raw.state("edge")
        self._serving = None
        if after != before:
            self.writes.append(WorldWrite(self.sched.t, self.sched.slices, "person", 0,
                                          "person", "edge", "edit", None, "person", None,
                                          before, after))
            if self.capture:
                self.writes_log.append(self.writes[-1])
        self.trace("person edits edge by hand: %s -> %s", before, after)

    def person_fence(self) -> None:
        """Someone powers off the old primary database by hand (no fence token)."""
        before = self.raw.state("pg")
        self.raw.fakes["pg"].fence_by_person("dc-a")
        after = self.raw.state("pg")
        if after != before:
            self.writes.append(WorldWrite(self.sched.t, self.sched.slices, "person", 0,
                                          "person", "pg", "fence", None, "person", None,
                                          before, after))
            if self.capture:
                self.writes_log.append(self.writes[-1])
        self.trace("person powers off dc-a's database: %s -> %s", before, after)

    def client_writes(self) -> None:
        """The application's clients commit a row on every database node that takes writes
        (a node cut off from us too: its own clients still reach it)."""
        fake = self.raw.fakes["pg"]
        rows = {name: fake.commit(name) for name in sorted(fake.nodes())}
        self.trace("clients commit %s", {n: r for n, r in rows.items() if r is not None})

    def set_primary(self, up: bool) -> None:
        self.primary_up = up
        testing.set_health("dc-a", up)
        self.trace("primary dc-a %s", "recovers" if up else "FAILS")
        if self.schedule.db_lost:  # its database host goes (and comes back) with it
            self.raw.fakes["pg"].set_node("dc-a", reachable=up)

    # --- journal mirror (the status) --------------------------------------------------------

    def on_sql(self, statement: str) -> None:
        """Every statement a process runs on the journal: note the tables written."""
        if statement[:1] in "IUDRiudr":
            table = written_table(statement)
            if table is not None:
                self.dirty.add(table)
                if table in STATUS_TABLES:
                    self.status_seq += 1

    def mirror(self, journal: Any, plan: str) -> None:
        """A journal listener: the status mirrors what the journal says right now. What it
        shows is read only if needed (`mirror_status`): a read transaction on a connection
        of its own keeps the journal as it is now."""
        self.mirror_seq = self.status_seq
        db = self._mirror
        if db is None:
            db = self._mirror = self.files.connection()
        if db.in_transaction:
            db.execute("COMMIT")
        db.execute("BEGIN")
        db.execute("SELECT 1 FROM plan_state LIMIT 1").fetchall()  # the snapshot starts

    def mirror_status(self) -> tuple[Any, ...]:
        """What the status showed at the last listener call."""
        from tests.reliability.sim.invariants import EMPTY_STATUS, status_of

        if self._mirror is None or not self._mirror.in_transaction:
            return EMPTY_STATUS
        return status_of(self._mirror, self.plan.name)

    # --- processes ----------------------------------------------------------------------------

    def _engine(self, proc: Replica) -> Engine:
        journal = self.files.journal(self, proc)
        journal.listeners.append(partial(self.mirror, journal))
        proc.journal = journal
        backends = SimBackends(self, proc, audit=partial(journal.audit, plan=self.plan.name))
        coordinator = SimCoordinator(self, proc) if self.schedule.coordinator else None
        return Engine(self.plan, journal, backends=backends, clock=self.clock,
                      holder=proc.holder, lease_ttl=self.schedule.lease_ttl, backoff=0.5,
                      coordinator=coordinator, spawn=self.spawn_work)

    def spawn_work(self, fn: Callable[[], Any], name: str) -> SimWork:
        parent = self.sched.me()
        actor = self.sched.spawn(name, fn, group=parent.group,
                                 ctx=contextvars.copy_context())
        return SimWork(self.sched, actor)

    def _add(self, proc: Replica) -> None:
        self.processes.append(proc)
        self._by_group[proc.group] = proc

    def start_replica(self, name: str) -> Replica:
        old = self.replicas.get(name)
        incarnation = old.incarnation + 1 if old else 1
        holder = f"{name}-host-{100 + incarnation}"
        if old is not None and self.rng.random() < self.schedule.same_name:
            holder = old.holder  # a pod restarted under its old name
        proc = Replica(name, holder, f"{name}#{incarnation}", incarnation=incarnation)
        proc.engine = self._engine(proc)
        self.replicas[name] = proc
        self._add(proc)
        proc.loop = self.sched.spawn(f"{name}#{incarnation}", partial(self._loop, proc),
                                     group=proc.group)
        self.trace("%s starts as holder %s", proc.group, holder)
        return proc

    def _loop(self, proc: Replica) -> None:
        while True:
            samples = self.samples(proc)
            try:
                st = proc.engine.tick(samples)
            except Crash:
                raise
            except ENV_ERRORS as exc:
                self.trace("%s: failoverctl run exits: %r", proc.group, exc)
                self._exits.append((proc, repr(exc)))
                return
            except Exception as exc:
                self._unwinding(exc)
                raise Violation("engine error", f"{proc.group}: Engine.tick raised "
                                f"{exc!r}") from exc
            self.trace("%s: tick -> %s: %.90s", proc.group, st.phase.value,
                       st.last_decision or "")
            self.sched.sleep(plans.TICK)

    def start_cli(self, kind: str) -> None:
        self._cli_n += 1
        name = f"cli-{self._cli_n}"
        proc = Replica(name, f"{name}-{kind}", name, kind="cli")
        proc.engine = self._engine(proc)
        self._add(proc)
        self.counts["cli"] += 1
        proc.loop = self.sched.spawn(name, partial(self._cli, proc, kind), group=name)
        self.trace("%s: failoverctl %s", name, kind)

    def _cli(self, proc: Replica, kind: str) -> None:
        engine, journal = proc.engine, proc.journal
        plan = self.plan.name
        wait = 30.0
        deadline = self.sched.t + wait
        try:
            try:
                if kind in ("failover", "failback"):
                    request_id = engine.request(kind, actor="oncall", reason="sim")
                    run_id = None
                    while run_id is None:
                        engine.reconcile()
                        run_id = (journal.request(request_id) or {}).get("run_id")
                        if run_id is None:
                            if self.sched.t > deadline:
                                self.trace("%s: request %s not picked up", proc.name,
                                           request_id)
                                return
                            self.sched.sleep(CLI_POLL)
                    self.trace("%s: %s request -> run %s", proc.name, kind, run_id)
                    self._follow(proc, run_id, deadline)
                elif kind == "approve":
                    run = journal.active_run(plan)
                    if run is None or run.phase is not Phase.AWAITING_APPROVAL:
                        self.trace("%s: nothing awaits approval", proc.name)
                        return
                    step = ""
                    if run.approved:
                        waiting = [r for r in journal.steps(run.id)
                                   if r.status is StepStatus.AWAITING_APPROVAL]
                        if not waiting:
                            self.trace("%s: no step awaits approval", proc.name)
                            return
                        step = waiting[0].name
                    engine.approve(run.id, actor="oncall", step=step)
                    self.trace("%s: approved %s %s", proc.name, run.id, step or "run")
                    self._follow(proc, run.id, deadline)
                elif kind == "done":
                    run = journal.active_run(plan)
                    human = [r for r in journal.steps(run.id)
                             if r.status is StepStatus.AWAITING_PERSON] if run else []
                    if run is None or not human:
                        self.trace("%s: no human step is open", proc.name)
                        return
                    if human[0].name == "fence-primary" or human[0].action == "promote":
                        # they fenced it by hand, then say so
                        self.person_fence()
                    engine.done(run.id, human[0].name, actor="oncall")
                    self.trace("%s: done %s %s", proc.name, run.id, human[0].name)
                    engine.reconcile()
            finally:
                engine.release()
        except Crash:
            raise
        except ENV_ERRORS as exc:
            self.trace("%s: exits with %r", proc.name, exc)
        except Exception as exc:
            self._unwinding(exc)
            raise Violation("engine error", f"{proc.name} ({kind}) raised {exc!r}") from exc
        finally:
            proc.alive = False

    def _unwinding(self, exc: Exception) -> None:
        """A crashed process's code unwinding (a `finally` that reaches its closed journal
        handle) is not the engine's error: a real process that died runs no code at all."""
        if self.sched.me().dead:
            raise Crash(f"crashed; while unwinding: {exc!r}") from exc

    def _follow(self, proc: Replica, run_id: str, deadline: float) -> None:
        while True:
            proc.engine.reconcile()
            run = proc.journal.run(run_id)
            if run is None or run.finished_at is not None \
                    or run.phase is Phase.AWAITING_APPROVAL or self.sched.t > deadline:
                self.trace("%s: stops following %s: %s", proc.name, run_id,
                           run.phase.value if run else "?")
                return
            self.sched.sleep(CLI_POLL)

    def kill(self, proc: Replica, why: str) -> None:
        """The process dies: its actors stop at their next yield, its handles are gone."""
        if not proc.alive:
            return
        proc.alive = False
        self.trace("%s dies (%s)", proc.group, why)
        group = [a for a in self.sched.actors if a.group == proc.group]
        for actor in group:
            actor.dead = True
        with suppress(sqlite3.Error):
            proc.journal._db.close()
        for actor in group:
            self.sched.kill(actor)
        if proc.kind == "replica" and self.schedule.restart is not None:
            low, high = self.schedule.restart
            self.at(self.sched.t + self.rng.uniform(low, high),
                    partial(self._restart, proc.name))

    def _restart(self, name: str) -> None:
        if not self.replicas[name].alive:
            self.counts["restarts"] += 1
            self.start_replica(name)

    def _whom(self, whom: str) -> Replica | None:
        if whom == "holder":
            holder = self.checker.authority()[0]
            alive = [p for p in self.processes if p.alive and p.holder == holder]
            return alive[-1] if alive else None
        proc = self.replicas.get(whom)
        return proc if proc is not None and proc.alive else None

    def crash(self, whom: str) -> None:
        proc = self._whom(whom)
        if proc is not None:
            self.counts["crashes"] += 1
            self.kill(proc, "crash")

    def stall(self, whom: str, seconds: float) -> None:
        proc = self._whom(whom)
        if proc is None:
            return
        self.counts["stalls"] += 1
        self.trace("%s is paused for %.2f s", proc.group, seconds)
        for actor in self.sched.actors:
            if actor.group == proc.group:
                actor.frozen_until = self.sched.t + seconds

    def partition(self, whom: str, what: str, cut: bool) -> None:
        proc = self.replicas.get(whom) if whom != "holder" else self._whom(whom)
        if proc is None:
            return
        if cut:
            self.counts["partitions"] += 1
        if what in ("backends", "both"):
            proc.cut_backends = cut
        if what in ("lease", "both"):
            proc.cut_lease = cut
        self.trace("%s %s %s", proc.group, "cut from" if cut else "reconnected to", what)

    # --- events -------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, fn))

    def _plan_events(self) -> None:
        s = self.schedule
        for start, end in s.outages:
            self.at(start, partial(self.set_primary, False))
            if end < s.horizon:
                self.at(end, partial(self.set_primary, True))
        for t, n, whom in s.crashes:
            if t is not None:
                self.at(t, partial(self.crash, whom))
            else:
                assert n is not None
                self._slice_events.append((n, partial(self.crash, whom)))
        self._slice_events.sort(key=lambda e: e[0])
        for t, whom, seconds in s.stalls:
            self.at(t, partial(self.stall, whom, seconds))
        for t0, t1, whom, what in s.partitions:
            self.at(t0, partial(self.partition, whom, what, True))
            self.at(t1, partial(self.partition, whom, what, False))
        for t, kind in s.clis:
            self.at(t, partial(self.start_cli, kind))
        for t in s.person:
            self.at(t, self.person_edit)
        if "pg" in self.raw.fakes:
            for i in range(int(s.horizon / CLIENT_EVERY)):
                self.at((i + 0.5) * CLIENT_EVERY, self.client_writes)

    def run(self) -> Result:
        violation: Violation | None = None
        journal: list[dict[str, Any]] = []
        try:
            with patched(self):
                try:
                    self._start()
                    self.sched.drive()
                except Violation as exc:
                    violation = exc
                except HarnessError as exc:
                    violation = Violation("harness", str(exc))
                finally:
                    try:
                        self.sched.shutdown()
                    except HarnessError as exc:
                        violation = violation or Violation("harness", str(exc))
            if self.capture:
                journal = self._dump()
        finally:
            self.checker.close()
            if self._mirror is not None:
                self.files.give_back(self._mirror)
            for proc in self.processes:  # every actor has finished: the handles are free
                self.files.done(proc.journal)
                if "outbox" in vars(proc.engine):  # (its cycle with the engine would keep
                    del proc.engine.outbox  # it, and every later `testing.reset` flushes it)
        violation = self.violation or violation
        if violation is not None:
            self.trace("VIOLATION %s", str(violation))
        self.counts.update({f"checked {k}": n for k, n in self.checker.checked.items()})
        return Result(self.schedule.seed, violation, self.sched.slices, self.sched.t,
                      self.n_writes, self.checker.n_runs, list(self._trace), self.schedule,
                      dict(self.counts), self.schedule.name, self.writes_log,
                      self.checker.history, journal)

    def _dump(self) -> list[dict[str, Any]]:
        """The plan's runs as the journal holds them at the end, oldest first."""
        journal = open_journal(self, self.path, None)
        journal._sim = None
        try:
            return [{**run.to_json(), "steps": [rec.to_json() for rec in journal.steps(run.id)]}
                    for run in reversed(journal.runs(self.plan.name, limit=1000))]
        finally:
            journal.close()

    def _start(self) -> None:
        s = self.schedule
        self._plan_events()
        if s.prepare is not None:
            s.prepare(self)
        for i in range(s.replicas):
            self.start_replica(f"r{i + 1}")
        self.checker.start()

    # --- the scheduling step (run by whichever thread holds the baton) -------------------

    def _step(self, actor: Actor | None) -> Actor | None:
        """`actor` yielded or finished (None: the start): check the invariants, fire what
        is due, and pick who runs next; None when the schedule is over (its horizon, or a
        violation: kept in `self.violation`). Never raises: the caller is the code under
        test."""
        try:
            return self._next(actor)
        except Violation as exc:
            self.violation = self.violation or exc
        except HarnessError as exc:
            self.violation = self.violation or Violation("harness", str(exc))
        except Exception:
            self.violation = self.violation or Violation(
                "harness", f"the simulation's step failed:\n{traceback.format_exc()}")
        return None

    def _next(self, actor: Actor | None) -> Actor | None:
        sched, checker = self.sched, self.checker
        if actor is not None:
            if actor.finished and isinstance(actor.error, Violation):
                raise actor.error
            checker.after_event(actor)
            if actor.finished:
                sched.prune()
                proc = self._by_group.get(actor.group)
                if proc is not None and proc.kind == "cli" and actor is proc.loop:
                    self._reap(proc)  # a CLI whose command returned exits
            while self._exits:
                proc, why = self._exits.pop(0)
                self.counts["exits"] += 1
                self.kill(proc, why)
            if sched.slices > MAX_SLICES:
                raise Violation("no progress", f"{MAX_SLICES} events without the simulated "
                                "time reaching the horizon (an actor loops without waiting)")
        events, at_slice = self._events, self._slice_events
        while True:
            while events and events[0][0] <= sched.t:
                fn = heapq.heappop(events)[2]
                contextvars.Context().run(fn)  # outside any actor's context (its fence)
                checker.after_event(None)
            while at_slice and at_slice[0][0] <= sched.slices:
                fn = at_slice.pop(0)[1]
                contextvars.Context().run(fn)
                checker.after_event(None)
            now = sched.t
            for dying in sched.unwind:
                if dying.ready(now):
                    return dying
            runnable = sched.runnable()
            if runnable:
                if len(runnable) == 1:
                    return runnable[0]
                return runnable[self.rng.randrange(len(runnable))]
            wake = sched.next_wake()
            nxt = events[0][0] if events else None
            if wake is None or (nxt is not None and nxt < wake):
                wake = nxt
            if wake is None or wake > self.schedule.horizon:
                return None
            sched.t = max(now, wake)
            checker.after_time()

    def _reap(self, proc: Replica) -> None:
        """A process whose main actor returned ends: its remaining actors end with it (its
        journal handle closes, unless none of them can use it any more: kept for reuse)."""
        group = [a for a in self.sched.actors if a.group == proc.group]
        for actor in group:
            actor.dead = True
            self.sched.kill(actor)
        if any(not actor.finished for actor in group):  # a write in flight: lands, then dies
            with suppress(sqlite3.Error):
                proc.journal._db.close()


_TEMPLATE: list[tempfile.TemporaryDirectory[str]] = []
_FILES: list[JournalFiles] = []
_SERIAL = itertools.count()


def _template() -> Path:
    """An empty journal, made once per process by the real `Journal` and copied for each
    schedule (creating the schema is a good part of a short schedule's cost); schedules
    run in the same directory."""
    if not _TEMPLATE:
        _TEMPLATE.append(tempfile.TemporaryDirectory(
            dir=SHM if SHM.is_dir() else None, prefix="failover-sim-"))
        Journal(Path(_TEMPLATE[0].name) / "empty.db").close()
    return Path(_TEMPLATE[0].name) / "empty.db"


def _files() -> JournalFiles:
    """This process's journal file, empty for the next schedule."""
    if not _FILES:
        path = _template().parent / "journal.db"
        shutil.copyfile(_template(), path)
        _FILES.append(JournalFiles(str(path)))
    else:
        _FILES[0].reset()
    return _FILES[0]


def forget_inherited() -> None:
    """In a forked worker: the parent's files and connections are not this process's
    (kept referenced, never closed here: closing would touch the parent's WAL)."""
    _INHERITED.extend(_FILES)
    _FILES.clear()
    _INHERITED.extend(_TEMPLATE)
    _TEMPLATE.clear()


_INHERITED: list[Any] = []


def remove_files() -> None:
    """Close this process's journal handles and remove its files (a worker, as it exits)."""
    for files in _FILES:
        files.close()
    _FILES.clear()
    for directory in _TEMPLATE:
        directory.cleanup()
    _TEMPLATE.clear()


def run_schedule(seed: int) -> Result:
    return Sim(draw(seed)).run()

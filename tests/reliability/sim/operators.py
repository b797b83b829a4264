"""The operator in the simulation: real `Operator` replicas over one `FakeKube` (issues 22
and 20).

`run_operator_schedule(seed)` draws an `OpSchedule` and plays it: two or three replicas
of `controller.operator.Operator`, each a simulated process with its own journal (a pod's
own file, as deployed: the status is what replicas share), its own client of one
`FakeCluster` (the API server), the simulation's backends, samples and clock
(`operator.Parts`), and these actors, all on the simulated scheduler:

- **elect**: the operator's own `_elect` loop (Lease rounds every retry period; a lost
  round stands the replica down);
- **watch**: the operator's own `_watch` (list, then watch; a watch waits on the
  simulated clock for the cluster to change);
- **tick**: the ticker's queueing (`_due` plans onto the work queue while leading);
- **work**: a worker per plan taking keys off the operator's `WorkQueue` and calling
  `reconcile`, which runs the engine (its steps' work as simulated actors too).

**Shards** (`_sharded`, three schedules in ten): two shards of two or three replicas
each, every replica given its shard as the real one is (`--shard K/2`, or
`--shard-selector failover.example.io/shard=a` and `!failover.example.io/shard`), so each
shard elects its leader on its own Lease (`failover-controller-shard-K-of-2`, ...), and a
second plan, `sim-b`, with a world of its own (its fakes keyed apart: `PlanView` tells
each world write's plan). The plans start in either shard (by the hash of their names,
or by a label, which wins) and are moved to the other shard by `kubectl label` at any
moment (`MOVES`: while idle, while no run is active, at once, or while a step of its run
runs; `controller/operator_fence.py` keeps one actor per plan). Crashes, stalls,
partitions and stand-downs aim at either shard's leader or any replica.

Events, each from the seed: the primary failing and recovering, a replica killed (the
leader most often, also mid-step at a random event), cut from the API server (and/or the
backends) for a while, the leader standing down (SIGTERM: `elector.stop`, its work
cancelled at the next fence check, `_stand_down`, the Lease released), the plan deleted
(at once, mid-run, or while failed over) and created again under its name (sometimes
without its `dns-cutover` step), status writes answered 503 (at any write, the write of
a run's final record, or of a failed step), slow, hanging and failing backends, and
requests by annotation (failover, failback, approve, done) as kubectl would make them,
and a while when the API server answers every request slowly (`SLOW`: a loaded host,
each request taking up to half the retry period, so a leader's renewals land between
the read and the write of its fencing token's raise).
After the schedule's active part the faults heal and the replicas settle, so "the status
mirrors the journal once writes succeed" can be checked at the end.

The invariants are `op_checks.OpChecker`'s. A failure's report ends with the replay line
(`FAILOVER_SIM_SEED=N ... tests/reliability/test_simulation_operator.py`).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import controller.elector
import controller.operator
import controller.operator_fence
from controller.annotations import A_APPROVE, A_DONE, A_REQUEST
from controller.backends import Backends
from controller.crd import GROUP, PLURAL, VERSION
from controller.elector import Elector, LeaderConfig
from controller.fencing import LostLease
from controller.kube import KubeError, Lease
from controller.model import Phase, Sample, StepStatus
from controller.operator import SHUTDOWN_SECONDS, Operator, Parts
from controller.plan import FailoverPlan, parse_plan
from controller.sharding import SHARD_LABEL, HashShard, LabelShard, Shard
from controller.testing_kube import FakeCluster, FakeKube, Fault
from tests.reliability.sim import plans
from tests.reliability.sim.harness import (
    SHM,
    Replica,
    Result,
    Schedule,
    Sim,
    Violation,
    _template,
    patched,
)
from tests.reliability.sim.scheduler import Actor, Crash, HarnessError
from tests.reliability.sim.world import (
    Faults,
    RawBackends,
    SimBackends,
    WorldWrite,
    open_journal,
)

NAMESPACE = "failover"
NAME = "sim"
KEY = (GROUP, PLURAL, NAMESPACE, NAME)
SECOND = "sim-b"  # a sharded schedule's second plan (the hash puts sim in 0, sim-b in 1)
SHARDED = 0.3  # the share of schedules run over two shards
FOREIGN = 0.3  # the share whose plans start with a status written under another Lease
FOREIGN_HOLDER = "unsharded-0"  # its writer: a replica of a deployment since stopped
RIVAL = 0.25  # the share of sharded schedules with an unsharded group running beside
SLOW = 0.3  # the share of schedules with a while of slow answers from the API server
# when the sweep moves a plan to another shard: while it is idle (no run active, healthy
# with its primary up or failed over, no automatic failback, the object unchanged for
# `IDLE` s: nothing starts a run or writes its status as it moves, but a person's
# request), while no run is active, at once, or while a step of its run runs.
MOVES = ("idle", "quiet", "now", "mid-run")
IDLE = 1.0
TICK = 1.0  # the operator's tick
ENV = (KubeError, ConnectionError, TimeoutError, sqlite3.OperationalError)
REPLAY = "tests/reliability/test_simulation_operator.py"


# --- the schedule ----------------------------------------------------------------------------


@dataclass
class OpSchedule(Schedule):
    """A `Schedule` (its crashes, stalls, partitions — "lease" meaning the API server —,
    outages and backend faults) plus the operator's own events."""

    leader: tuple[float, float, float] = (15.0, 10.0, 2.0)  # duration, deadline, retry
    active: float = 20.0  # events happen before this; then everything heals and settles
    standdowns: list[tuple[float, str]] = field(default_factory=list)  # (time, whom)
    deletes: list[tuple[float, str]] = field(default_factory=list)  # (t, now|mid-run|failed-over)
    recreate: tuple[float, bool] | None = None  # (delay after it is gone, without dns-cutover)
    status_faults: list[tuple[float, str, int]] = field(default_factory=list)
    # (time, any|final|failed-step, how many status writes in a row fail)
    requests: list[tuple[float, str]] = field(default_factory=list)  # annotation requests
    # sharded: `replicas` per shard, each given its shard as `--shard K/2` (or, with
    # `selector`, `--shard-selector KEY=a` and `!KEY`); a second plan, "sim-b"
    shards: int = 1
    selector: bool = False
    second: tuple[str, bool, bool, bool] | None = None  # sim-b's plan variant
    labels: tuple[str | None, ...] = (None, None)  # each plan's shard label at creation
    relabels: list[tuple[float, int, str]] = field(default_factory=list)
    # (time, plan index, now|idle|quiet|mid-run): the plan moved to the other shard
    foreign: int | None = None  # the fencing token each plan's status carries when the
    # schedule starts, written by `FOREIGN_HOLDER` under another Lease (an unsharded
    # deployment before sharding, or another shard layout): its count is not ours
    rival: bool = False  # sharded: a third group of `replicas`, unsharded, runs beside
    # the shards (the deployment before sharding, not stopped): it claims every plan too
    slow: tuple[float, float, float] | None = None  # (from, until, seconds): each request
    # to the API server takes up to `seconds` meanwhile (a loaded host)

    def describe(self) -> str:
        sharded = (f"; {self.shards} shards by {'selector' if self.selector else 'hash'}, "
                   f"{self.replicas} replicas each; sim-b {self.second}; labels "
                   f"{self.labels}; relabels {self.relabels}"
                + ("; an unsharded group beside them" if self.rival else "")
                if self.shards > 1 else "")
        return (f"{super().describe()}; operator lease {self.leader}; active until "
                f"{self.active:.1f} s; stand-downs {self.standdowns}; deletes "
                f"{self.deletes}; recreate {self.recreate}; status 503s "
                f"{self.status_faults}; annotation requests {self.requests}{sharded}"
                + (f"; statuses written under another Lease with token {self.foreign}"
                   if self.foreign is not None else "")
                + (f"; the API server slow (up to {self.slow[2]:.2f} s a request) from "
                   f"{self.slow[0]:.1f} s to {self.slow[1]:.1f} s" if self.slow else ""))


def draw_operator(seed: int) -> OpSchedule:
    rng = random.Random(f"operator-schedule:{seed}")
    key = plans.KEYS[rng.randrange(len(plans.KEYS))]
    leader = rng.choice([(6.0, 4.0, 1.0), (15.0, 10.0, 2.0)])
    active = rng.uniform(12.0, 30.0)
    start = rng.uniform(0.0, 3.0)
    outages = [(start, start + rng.uniform(6.0, 40.0) if rng.random() < 0.6 else 1e9)]
    whom = ["r1", "r2", "r3", "holder", "holder", "holder"]
    crashes: list[tuple[float | None, int | None, str]] = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        if rng.random() < 0.5:
            crashes.append((rng.uniform(0, active), None, rng.choice(whom)))
        else:  # at a random event: mid-step, between two requests
            crashes.append((None, rng.randrange(20, 400), rng.choice(whom)))
    partitions = []
    if rng.random() < 0.3:
        t0 = rng.uniform(0, active)
        partitions.append((t0, t0 + rng.uniform(1.0, 2.5 * leader[0]), rng.choice(whom),
                           rng.choice(["lease", "lease", "backends", "both"])))
    stalls = [(rng.uniform(0, active), rng.choice(whom), rng.uniform(1.0, 2.0 * leader[0]))
              for _ in range(1 if rng.random() < 0.1 else 0)]
    standdowns = [(rng.uniform(0, active), "holder") for _ in range(
        1 if rng.random() < 0.25 else 0)]
    deletes = [(rng.uniform(start, active), rng.choice(["now", "mid-run", "mid-run",
                                                        "failed-over"]))
               for _ in range(1 if rng.random() < 0.45 else 0)]
    recreate = ((rng.uniform(0.2, 4.0), rng.random() < 0.5)
                if deletes and rng.random() < 0.75 else None)
    status_faults = [(rng.uniform(0, active), rng.choice(["any", "final", "failed-step"]),
                      rng.choice([1, 1, 2, 6])) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
    manual = key[0] == "manual"
    kinds = ["failover", "failback", "approve", "done", "approve"] if manual else \
        ["failover", "failback", "failback"]
    requests = sorted((rng.uniform(0, active), rng.choice(kinds))
                      for _ in range(rng.choice([0, 1, 2, 3] if not manual else [2, 3, 4])))
    backends = ["edge", "zone"] + (["db"] if key[0] == "restore" else [])
    faults = Faults(slow=rng.choice([0.0, 0.0, 0.05]), lost_ack=rng.choice([0.0, 0.0, 0.1]))
    if rng.random() < 0.3:  # a step fails (onFailure abort or revert decides what follows)
        t0 = rng.uniform(0, active)
        faults.down.append((rng.choice(backends), t0, t0 + rng.uniform(1.0, 15.0)))
    if rng.random() < 0.1:
        t0 = rng.uniform(0, active)
        faults.hangs.append((rng.choice(backends), t0, t0 + rng.uniform(1.0, leader[0])))
    settle = leader[0] + 10.0  # a new leader, its adoption, the status written again
    schedule = OpSchedule(
        seed=seed, plan_key=key, replicas=rng.choice([2, 2, 3]), horizon=active + settle,
        lease_ttl=30.0, coordinator=False, outages=outages, crashes=crashes,
        restart=(0.5, 6.0) if rng.random() < 0.9 else None, same_name=0.3, stalls=stalls,
        partitions=partitions, clis=[], person=[], faults=faults,
        clear_after=rng.choice([1, 1, 3]), leader=leader, active=active,
        standdowns=standdowns, deletes=deletes, recreate=recreate,
        status_faults=status_faults, requests=requests)
    foreign = random.Random(f"operator-foreign:{seed}")  # apart: the other draws stay
    if foreign.random() < FOREIGN:
        schedule.foreign = foreign.choice([0, 3, 25])
        schedule.horizon += leader[0]  # a leader that took over near the end holds a
        # plan with another Lease's token for a Lease's duration before adopting it
    slow = random.Random(f"operator-slow:{seed}")  # apart too
    if slow.random() < SLOW:
        t0 = slow.uniform(0.0, active)
        schedule.slow = (t0, min(t0 + slow.uniform(5.0, 20.0), active), leader[2] / 2)
    return _sharded(schedule) if rng.random() < SHARDED else schedule


def _sharded(s: OpSchedule) -> OpSchedule:
    """The schedule `s` over two shards of two (or three) replicas, with a second plan and
    plans moved between the shards: its events aimed at the replicas of both shards."""
    rng = random.Random(f"operator-shards:{s.seed}")
    s.shards, s.replicas = 2, rng.choice([2, 2, 3])
    s.selector = rng.random() < 0.3
    s.second = plans.KEYS[rng.randrange(len(plans.KEYS))]
    if s.selector:  # shard 0: KEY=a, shard 1: !KEY
        s.labels = ("a", None) if rng.random() < 0.7 else (None, "a")
    else:  # the hash places sim in 0 and sim-b in 1; a label wins over the hash
        s.labels = rng.choice([(None, None), ("0", "1"), ("1", "0"), ("1", None)])
    slots = [f"r{i + 1}" for i in range(2 * s.replicas)]
    whom = [*slots, "holder", "holder", "holder:0", "holder:1"]

    def aim(events: list[Any], at: int) -> list[Any]:
        return [(*e[:at], rng.choice(whom), *e[at + 1:]) for e in events]

    s.crashes = aim(s.crashes, 2) + [
        (rng.uniform(0, s.active), None, rng.choice(["holder:0", "holder:1"]))
        for _ in range(rng.choice([0, 1]))]
    s.partitions, s.stalls = aim(s.partitions, 2), aim(s.stalls, 1)
    s.standdowns = aim(s.standdowns, 1)
    s.relabels = sorted((rng.uniform(0, s.active), rng.randrange(2), rng.choice(MOVES))
                        for _ in range(rng.choice([0, 1, 1, 2, 3])))
    s.rival = random.Random(f"operator-rival:{s.seed}").random() < RIVAL
    return s


def plan_body(key: tuple[str, bool, bool, bool], clear_after: int,
              without_dns: bool = False, *, name: str = NAME,
              label: str | None = None) -> dict[str, Any]:
    """The FailoverPlan object of a variant; a plan other than `sim` has its own world:
    each backend's fake (and the probes' traffic table) keyed `KEY-NAME`."""
    doc = plans.document(*key, clear_after=clear_after)
    if without_dns:
        doc["spec"]["steps"] = [s for s in doc["spec"]["steps"] if s["name"] != "dns-cutover"]
    if name != NAME:
        for backend in doc["spec"]["backends"]:
            backend["options"]["key"] = f"{backend['options']['key']}-{name}"
        for service in doc["spec"]["services"]:  # (the services share their probes' dicts)
            service["probes"] = [{**probe, "options": {
                **probe["options"], "traffic": f"{probe['options']['traffic']}-{name}"}}
                for probe in service["probes"]]
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    if label is not None:
        doc["metadata"]["labels"] = {SHARD_LABEL: label}
    return doc


@cache
def _parsed(key: tuple[str, bool, bool, bool], clear_after: int, name: str) -> FailoverPlan:
    return parse_plan(plan_body(key, clear_after, name=name))


def shards_of(schedule: OpSchedule) -> list[Shard | None]:
    """The shards the replicas are given: [None] when the operator is not sharded."""
    if schedule.shards == 1:
        return [None]
    rival: list[Shard | None] = [None] if schedule.rival else []  # after the shards:
    # `shard_of` never names it
    if schedule.selector:
        return [LabelShard(SHARD_LABEL, "a"), LabelShard(SHARD_LABEL, None), *rival]
    return [*(HashShard(k, schedule.shards) for k in range(schedule.shards)), *rival]


def shard_of(shards: list[Shard | None], name: str, labels: dict[str, str]) -> int | None:
    """The shard a plan with these labels is in (None: none of them takes it)."""
    return next((k for k, shard in enumerate(shards)
                 if shard is None or shard.owns(NAMESPACE, name, labels)), None)


@dataclass
class SimPlan:
    """One FailoverPlan of the schedule and its own world (its fakes, keyed apart)."""

    index: int
    name: str
    key: tuple[str, bool, bool, bool]
    label: str | None
    plan: FailoverPlan
    raw: RawBackends
    serving: str | None = None
    writes: int = 0  # world writes made

    @property
    def obj_key(self) -> tuple[str, str, str, str]:
        return (GROUP, PLURAL, NAMESPACE, self.name)

    def serving_site(self) -> str:
        if self.serving is None:
            weights = dict(self.raw.state("edge"))
            self.serving = max(sorted(weights), key=lambda k: weights[k])
        return self.serving


class PlanView:
    """What one plan's backends see of the simulation (the `sim` of `world.BackendProxy`):
    the schedule's scheduler, randomness, faults and trace, and the plan's own world, so
    each world write is attributed to its plan."""

    def __init__(self, sim: OperatorSim, sp: SimPlan):
        self.sim, self.sp, self.plan = sim, sp, sp.plan
        self.sched, self.rng, self.faults = sim.sched, sim.rng, sim.faults

    def trace(self, text: str, *args: Any) -> None:
        self.sim.trace(text, *args)

    def write(self, actor: Actor, backend: str, method: str, fence: Any,
              do: Callable[[], Any]) -> Any:
        return self.sim.write_plan(self.sp, actor, backend, method, fence, do)

    def prepared_read(self, label: str | None, backend: str) -> None:
        return None  # (what a step saw as it prepared: the plan-file checker's concern)


# --- a replica ----------------------------------------------------------------------------


@dataclass
class OpReplica(Replica):
    """One operator process: its Operator, its client of the API server, its journal."""

    op: Operator | None = None
    kube: FakeKube | None = None
    path: str = ""
    stopping: bool = False  # standing down (SIGTERM): its loops end
    shard: int = 0  # the shard it is given (0 when the operator is not sharded)


class SimElector(Elector):
    """The operator's `Elector`, reading the Lease in its fence check in the actor itself:
    the real one reads it on a helper thread and waits for it in real time (so a slow
    host never holds a fence check past the renew deadline), which a schedule that is a
    pure function of its seed cannot have; here the read's time is the simulated hop."""

    gave_up: Callable[[LostLease], None]  # told of every raise of the token given up

    def _read_lease(self, wait: float) -> Lease | None:
        return self.kube.get_lease(self.namespace, self.config.lease_name, timeout=wait)

    def advance(self, at_least: int) -> int:
        try:
            return super().advance(at_least)
        except LostLease as exc:
            self.gave_up(exc)
            raise


class SimStop:
    """The `threading.Event` the operator's loops take, on the simulated clock."""

    def __init__(self, sim: OperatorSim, proc: OpReplica):
        self.sim, self.proc = sim, proc

    def is_set(self) -> bool:
        return self.proc.stopping

    def wait(self, timeout: float | None = None) -> bool:
        self.sim.sched.sleep(timeout or 0.0)
        return self.proc.stopping


class _Until:
    """A wait the scheduler ends early when `ready()` (it reads `cancelled` like a fence's)."""

    def __init__(self, ready: Callable[[], bool]):
        self.ready = ready

    @property
    def cancelled(self) -> bool:
        return self.ready()


class SimSamples:
    """A plan's samples: the simulated world as the replica sees it, every probe interval."""

    def __init__(self, sim: OperatorSim, proc: OpReplica, sp: SimPlan):
        self.sim, self.proc, self.sp, self.last = sim, proc, sp, float("-inf")

    @property
    def pending(self) -> bool:
        return self.sim.sched.t - self.last >= plans.TICK

    def drain(self) -> list[Sample]:
        if not self.pending:
            return []
        self.last = self.sim.sched.t
        return self.sim.plan_samples(self.sp, self.proc)


class SimProbing:
    def __init__(self, sim: OperatorSim, proc: OpReplica):
        self.sim, self.proc = sim, proc

    def start(self, plan: FailoverPlan, backends: Backends) -> SimSamples:
        return SimSamples(self.sim, self.proc, self.sim.plan_named(plan.name))

    def stop(self, samples: Any) -> None:
        return None

    def close(self) -> None:
        return None


@contextmanager
def operator_time(sim: Sim) -> Iterator[None]:
    """The operator modules' clocks follow the schedule (as `patched` does for others)."""
    modules = (controller.operator, controller.elector, controller.operator_fence)
    saved = [module.time for module in modules]
    for module in modules:
        module.time = SimpleNamespace(  # type: ignore[assignment]
            time=sim.sched.now, monotonic=sim.sched.monotonic)
    try:
        yield
    finally:
        for module, kept in zip(modules, saved, strict=True):
            module.time = kept  # type: ignore[assignment]


# --- the simulation -------------------------------------------------------------------------


class OperatorSim(Sim):
    schedule: OpSchedule

    def __init__(self, schedule: OpSchedule, *, capture: bool = False):
        from tests.reliability.sim.op_checks import OpChecker

        super().__init__(schedule, capture=capture)
        self.cluster = FakeCluster(seed=schedule.seed)
        self.admin = FakeKube(self.cluster, name="kubectl", clock=self.utc)
        self.dir = Path(tempfile.mkdtemp(dir=SHM if SHM.is_dir() else None,
                                         prefix="failover-opsim-"))
        self.paths: dict[str, str] = {}  # process group -> its journal file
        self.counts.update(deletes=0, recreates=0, standdowns=0, status_503=0, requests=0,
                           foreign=0, slow_api=int(schedule.slow is not None))
        self.healed = False
        self.injected: list[Fault] = []  # the status faults, with how often each hit
        self.shards = shards_of(schedule)
        self.plans = [SimPlan(0, NAME, schedule.plan_key, schedule.labels[0], self.plan,
                              self.raw)]
        if schedule.second is not None:
            second = _parsed(schedule.second, schedule.clear_after, SECOND)
            self.plans.append(SimPlan(1, SECOND, schedule.second, schedule.labels[1],
                                      second, RawBackends(second)))
            self.counts.update(sharded=1, relabels=0, rival=int(schedule.rival))
        self.views = {sp.name: PlanView(self, sp) for sp in self.plans}
        # the slot of each replica -> its shard: r1, r2 (, r3) in 0, the next ones in 1
        self.slot_shard = {f"r{i + 1}": i // schedule.replicas
                           for i in range(schedule.replicas * len(self.shards))}
        self.checker.close()
        self.ops = OpChecker(self)
        self.checker = self.ops  # type: ignore[assignment]  # the Sim's step calls it

    def operators(self) -> list[OpReplica]:
        """The operator processes alive now."""
        return [p for p in self.processes if isinstance(p, OpReplica) and p.alive]

    def plan_named(self, name: str) -> SimPlan:
        return next(sp for sp in self.plans if sp.name == name)

    def labels(self, sp: SimPlan) -> dict[str, str]:
        obj = self.cluster.objects.get(sp.obj_key)
        return dict((obj or {}).get("metadata", {}).get("labels") or {})

    def shard_now(self, sp: SimPlan) -> int | None:
        """The shard the plan is in now, by its labels as the API server has them."""
        return shard_of(self.shards, sp.name, self.labels(sp))

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.sched.now(), dt.UTC)

    # --- the API server, as the processes reach it ------------------------------------

    def hop(self, verb: str) -> None:
        """A request's network time: a yield point (none outside an actor: a person's
        kubectl, or the Elector's lease-reading thread while its actor waits for it);
        longer while the API server is slow."""
        if self.sched.actor_or_none() is not None:
            slow = self.schedule.slow
            if slow is not None and slow[0] <= self.sched.t < slow[1]:
                self.sched.sleep(self.rng.uniform(slow[2] / 2, slow[2]))
            else:
                self.sched.sleep(self.rng.uniform(0.001, 0.02))

    def wait_until(self, ready: Callable[[], bool], seconds: float) -> None:
        self.sched.wait(seconds, _Until(ready))

    def write_plan(self, sp: SimPlan, actor: Actor, backend: str, method: str, fence: Any,
                   do: Callable[[], Any]) -> Any:
        """`Sim.write` on the plan's own world, noting the plan, the step's record in the
        writer's journal and who holds the writer's shard's Lease as the write lands (a
        backend's own audit into the journal may yield, and the process be paused, before
        the write returns)."""
        token = None if fence is None else fence.token
        holder = None if fence is None else fence.holder
        label = None if fence is None else fence.label
        proc = self._by_group.get(actor.group)
        landing = (sp.name, self.ops.step_record(actor.group, label),
                   self.ops.authority(proc.shard if isinstance(proc, OpReplica) else 0))
        before = sp.raw.state(backend)
        error: BaseException | None = None
        try:
            result = do()
        except BaseException as exc:  # recorded, then raised to the caller
            error = exc
        after = sp.raw.state(backend)
        sp.serving = None
        if after != before:
            self.n_writes += 1
            sp.writes += 1
            w = WorldWrite(self.sched.t, self.sched.slices, actor.name, actor.id, actor.group,
                           backend, method, token, holder, label, before, after,
                           None if error is None else repr(error))
            self.writes.append(w)
            self.ops.landing[id(w)] = landing
            if self.capture:
                self.writes_log.append(w)
            self.trace("%s: WRITE %s %s.%s token=%s holder=%s label=%s: %s -> %s",
                       actor.name, sp.name, backend, method, token, holder, label, before,
                       after)
        else:
            self.trace("%s: %s %s.%s token=%s label=%s changed nothing%s", actor.name,
                       sp.name, backend, method, token, label,
                       "" if error is None else f" ({error!r})")
        if error is not None:
            raise error
        return result

    def plan_samples(self, sp: SimPlan, proc: OpReplica) -> list[Sample]:
        """The plan's probes: its services answer when the site carrying most of its
        traffic is up (all fail while the replica is cut from the backends)."""
        now = self.sched.now()
        if proc.cut_backends:
            return [Sample(s.name, False, now, detail="unreachable (partitioned)")
                    for s in sp.plan.spec.services]
        ok = self.primary_up or sp.serving_site() != "dc-a"
        return [Sample(s.name, ok, now, detail="" if ok else "HTTP 503")
                for s in sp.plan.spec.services]

    def status(self, name: str = NAME) -> dict[str, Any]:
        obj = self.cluster.objects.get((GROUP, PLURAL, NAMESPACE, name))
        return dict((obj or {}).get("status") or {})

    # --- processes ----------------------------------------------------------------------------

    def start_replica(self, name: str) -> Replica:
        s = self.schedule
        old = self.replicas.get(name)
        incarnation = old.incarnation + 1 if old else 1
        identity = f"{name}-pod-{100 + incarnation}"
        if old is not None and self.rng.random() < s.same_name:
            identity = old.holder  # a pod restarted under its old name
        group = f"{name}#{incarnation}"
        proc = OpReplica(name, identity, group, incarnation=incarnation,
                         shard=self.slot_shard[name])
        proc.path = str(self.dir / f"{name}-{incarnation}.db")
        shutil.copyfile(_template(), proc.path)
        self.paths[group] = proc.path
        proc.journal = open_journal(self, proc.path, proc)
        proc.kube = FakeKube(self.cluster, name=group, clock=self.utc,
                             monotonic=self.sched.monotonic, hop=self.hop,
                             wait_until=self.wait_until)
        proc.op = op = Operator(
            proc.kube, namespace=NAMESPACE, journal=proc.journal, identity=identity,
            leader=LeaderConfig(lease_duration=s.leader[0], renew_deadline=s.leader[1],
                                retry_period=s.leader[2]), tick=TICK, workers=1,
            parts=Parts(clock=self.clock, spawn=self.spawn_work,
                        # (a PlanView has what SimBackends and its proxies use of a Sim)
                        backends=lambda plan, audit: SimBackends(
                            cast(Sim, self.views[plan.name]), proc, audit),
                        probing=SimProbing(self, proc)), shard=self.shards[proc.shard])
        op.elector = op.fences.lease = elector = SimElector(proc.kube, NAMESPACE, identity,
                                                            op.elector.config,
                                                            base=LeaderConfig().lease_name)
        elector.gave_up = partial(self.ops.gave_up, proc)
        self.replicas[name] = proc
        self._add(proc)
        stop = SimStop(self, proc)
        for what, fn in (("elect", partial(op._elect, stop)), ("watch", partial(op._watch, stop)),
                         ("tick", partial(self._tick, proc))):
            self.sched.spawn(f"{group}/{what}", partial(self._guarded, proc, what, fn),
                             group=group)
        # a worker per plan: one plan's long step never holds up another (the real
        # operator's ticker adds workers while every worker is busy)
        for i in range(len(self.plans)):
            work = self.sched.spawn(f"{group}/work{i or ''}", partial(self._work, proc),
                                    group=group)
            proc.loop = proc.loop or work
        self.trace("%s starts as %s%s", group, identity, "" if self.shards == [None] else
                   f" for shard {self.shards[proc.shard]}")
        return proc

    def _guarded(self, proc: OpReplica, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Crash:
            raise
        except Exception as exc:
            self._unwinding(exc)
            raise Violation("operator error", f"{proc.group} {what} raised {exc!r}") from exc

    def _tick(self, proc: OpReplica) -> None:
        op = proc.op
        assert op is not None
        while not proc.stopping:
            self.sched.sleep(op.tick)
            if op.elector.leading():
                for key in list(op._objects):
                    if op._due(key):
                        op.queue.add(key)

    def _work(self, proc: OpReplica) -> None:
        op = proc.op
        assert op is not None
        queued = _Until(lambda: len(op.queue) > 0 or proc.stopping)
        while not proc.stopping:
            key = op.queue.get(timeout=0)
            if key is None:
                self.sched.wait(op.tick, queued)
                continue
            self.ops.reconciling(proc, key, True)
            try:
                op.reconcile(key)
            except Crash:
                raise
            except LostLease as exc:
                self.trace("%s: stops acting on %s: %.160s", proc.group, key, str(exc))
            except ENV as exc:
                self.trace("%s: reconcile of %s: %.160s", proc.group, key, repr(exc))
            except Exception as exc:
                self._unwinding(exc)
                raise Violation("operator error", f"{proc.group}: reconcile raised "
                                f"{exc!r}") from exc
            else:
                if self.healed and op.elector.leading():
                    self.ops.mirrored(proc, key)
            finally:
                self.ops.reconciling(proc, key, False)
                op.queue.done(key)

    def stand_down(self, whom: str) -> None:
        """SIGTERM: the operator's `run` epilogue — stop leading (a running step is
        cancelled at its next fence check), wait for the loops, stand down, release."""
        proc = self._whom(whom)
        if not isinstance(proc, OpReplica) or proc.stopping or proc.op is None:
            return
        self.counts["standdowns"] += 1
        self.ops.impair(proc)
        proc.stopping = True
        proc.op.elector.stop()
        self.trace("%s is told to stop (SIGTERM)", proc.group)
        self.sched.spawn(f"{proc.group}/shutdown", partial(self._shutdown, proc),
                         group=proc.group)

    def _shutdown(self, proc: OpReplica) -> None:
        op = proc.op
        assert op is not None
        deadline = self.sched.t + SHUTDOWN_SECONDS
        me = self.sched.me()
        for actor in [a for a in self.sched.actors if a.group == proc.group and a is not me]:
            self.sched.join(actor, max(0.0, deadline - self.sched.t))
        op._stand_down()
        op.elector.release()
        self._exits.append((proc, "stopped"))

    def _whom(self, whom: str) -> Replica | None:
        """A slot's live process, or `holder` (the leader of the shard `sim` is in) or
        `holder:K` (the leader of shard K): the live process holding that Lease."""
        if not whom.startswith("holder"):
            return super()._whom(whom)
        shard = (int(whom.partition(":")[2]) if ":" in whom
                 else self.shard_now(self.plans[0]) or 0)
        holder = self.ops.authority(shard)[0]
        alive = [p for p in self.operators() if p.holder == holder and p.shard == shard]
        return alive[-1] if alive else None

    def kill(self, proc: Replica, why: str) -> None:
        if isinstance(proc, OpReplica) and proc.alive:
            self.ops.impair(proc)
        super().kill(proc, why)

    def crash(self, whom: str) -> None:
        if not self.healed:  # (a crash drawn at a late event may come after the faults end)
            super().crash(whom)

    def stall(self, whom: str, seconds: float) -> None:
        proc = self._whom(whom)
        super().stall(whom, seconds)
        if isinstance(proc, OpReplica):
            self.ops.impair(proc, until=self.sched.t + seconds)

    def partition(self, whom: str, what: str, cut: bool) -> None:
        """Cut a replica from the backends and/or ("lease") the API server, where the
        Lease is; its journal is its own (a pod's file) and stays reachable."""
        proc = self.replicas.get(whom) if whom in self.replicas else self._whom(whom)
        if not isinstance(proc, OpReplica) or proc.kube is None:
            return
        if cut:
            self.counts["partitions"] += 1
        if what in ("backends", "both"):
            proc.cut_backends = cut
        if what in ("lease", "both"):
            proc.kube.cut = cut
            self.ops.impair(proc)
        self.trace("%s %s %s", proc.group, "cut from" if cut else "reconnected to",
                   "the API server" if what == "lease" else what)

    # --- the plan's life ---------------------------------------------------------------------

    def create_plan(self, without_dns: bool = False, index: int = 0) -> None:
        sp = self.plans[index]
        obj = self.admin.create(GROUP, VERSION, NAMESPACE, PLURAL, plan_body(
            sp.key, self.schedule.clear_after, without_dns, name=sp.name, label=sp.label))
        if self.schedule.foreign is not None and not self.sched.t:  # left from before
            obj = self.admin.update_status(GROUP, VERSION, NAMESPACE, PLURAL, sp.name, (
                lambda o: {**o, "status": {"phase": Phase.HEALTHY.value, "fencingToken":
                                           self.schedule.foreign, "fencingHolder":
                                           FOREIGN_HOLDER}}))
            self.counts["foreign"] += 1
            self.trace("fop/%s's status: written by %s with fencing token %d under another "
                       "Lease", sp.name, FOREIGN_HOLDER, self.schedule.foreign)
        self.trace("kubectl create fop/%s (uid %s%s%s)", sp.name, obj["metadata"]["uid"],
                   ", without dns-cutover" if without_dns else "",
                   f", in shard {self.shard_now(sp)}" if len(self.shards) > 1 else "")

    def relabel(self, index: int, when: str) -> None:
        """`kubectl label` moving the plan to the other shard: at once, while it is idle,
        while no run is active, or while a step of its run runs."""
        sp = self.plans[index]
        status = self.status(sp.name)
        run = status.get("run") or {}
        active = bool(run) and run.get("finishedAt") is None
        phase = status.get("phase")
        idle = (not active and not sp.plan.spec.automatic_failback
                and self.sched.t - self.ops.named[sp.name].changed >= IDLE
                and (phase == Phase.FAILED_OVER.value
                     or (phase == Phase.HEALTHY.value and self.primary_up)))
        fits = {"now": True, "idle": idle, "quiet": not active, "mid-run": active and any(
            step.get("status") == StepStatus.RUNNING.value for step in run["steps"])}[when]
        if sp.obj_key not in self.cluster.objects:
            return
        if not fits:
            if self.sched.t + 0.5 < self.schedule.active:
                self.at(self.sched.t + 0.5, partial(self.relabel, index, when))
            return
        before = self.shard_now(sp)
        target = 1 - (before or 0)
        label = (("a" if target == 0 else None) if self.schedule.selector
                 else str(target))

        def mutate(obj: dict[str, Any]) -> None:
            labels = obj["metadata"].setdefault("labels", {})
            labels.pop(SHARD_LABEL, None)
            if label is not None:
                labels[SHARD_LABEL] = label

        try:
            self.admin.update(GROUP, VERSION, NAMESPACE, PLURAL, sp.name, mutate)
        except KubeError as exc:  # deleted meanwhile
            self.trace("kubectl label fop/%s: %s", sp.name, exc)
            return
        self.counts["relabels"] += 1
        self.trace("kubectl label fop/%s %s=%s (%s; run %s %s): shard %s -> %s", sp.name,
                   SHARD_LABEL, label or "-", when, run.get("id"), run.get("phase"), before,
                   self.shard_now(sp))

    def delete_plan(self, when: str) -> None:
        status = self.status()
        run = status.get("run") or {}
        fits = {"now": True, "mid-run": bool(run) and run.get("finishedAt") is None,
                "failed-over": status.get("phase") == Phase.FAILED_OVER.value}[when]
        if KEY not in self.cluster.objects:
            return
        if not fits:
            if self.sched.t + 0.5 < self.schedule.active:
                self.at(self.sched.t + 0.5, partial(self.delete_plan, when))
            return
        self.counts["deletes"] += 1
        self.admin.delete(GROUP, VERSION, NAMESPACE, PLURAL, NAME)
        self.trace("kubectl delete fop/%s (%s; phase %s, run %s %s)", NAME, when,
                   status.get("phase"), run.get("id"), run.get("phase"))
        if self.schedule.recreate is not None:
            self.at(self.sched.t + 0.5, self.recreate_plan)

    def recreate_plan(self) -> None:
        assert self.schedule.recreate is not None
        delay, without_dns = self.schedule.recreate
        if KEY in self.cluster.objects:  # still held by its finalizer
            self.at(self.sched.t + 0.5, self.recreate_plan)
            return
        self.counts["recreates"] += 1
        self.at(self.sched.t + delay, partial(self.create_plan, without_dns))

    def status_fault(self, kind: str, times: int) -> None:
        def final(body: dict[str, Any] | None) -> bool:
            run = ((body or {}).get("status") or {}).get("run") or {}
            return run.get("finishedAt") is not None

        def failed_step(body: dict[str, Any] | None) -> bool:
            run = ((body or {}).get("status") or {}).get("run") or {}
            return any(s.get("status") == StepStatus.FAILED.value
                       for s in run.get("steps", []))

        when = {"any": None, "final": final, "failed-step": failed_step}[kind]
        self.counts["status_503"] += 1
        self.injected.append(self.cluster.inject(
            Fault("replace_status", NAME, times=times, when=when)))
        self.trace("the API server will answer the next %d status write(s) of %s with 503 "
                   "(%s)", times, NAME, kind)

    def annotate(self, kind: str) -> None:
        """A person's request through kubectl annotate, from what the status shows."""
        status = self.status()
        run = status.get("run") or {}
        notes: dict[str, str] = {}
        if kind in ("failover", "failback"):
            notes = {A_REQUEST: kind}
        elif kind == "approve" and run.get("finishedAt") is None and run.get("id"):
            waiting = [s["name"] for s in run.get("steps", [])
                       if s.get("status") == StepStatus.AWAITING_APPROVAL.value]
            notes = {A_APPROVE: f"{run['id']}:{waiting[0]}" if waiting else run["id"]}
        elif kind == "done" and run.get("finishedAt") is None and run.get("id"):
            human = [s["name"] for s in run.get("steps", [])
                     if s.get("status") == StepStatus.AWAITING_PERSON.value]
            if human:
                notes = {A_DONE: f"{run['id']}:{human[0]}"}
        if not notes or KEY not in self.cluster.objects:
            self.trace("kubectl annotate (%s): nothing to ask", kind)
            return
        self.counts["requests"] += 1

        def mutate(obj: dict[str, Any]) -> None:
            obj["metadata"].setdefault("annotations", {}).update(notes)

        try:
            self.admin.update(GROUP, VERSION, NAMESPACE, PLURAL, NAME, mutate)
        except KubeError as exc:  # deleted meanwhile
            self.trace("kubectl annotate %s: %s", notes, exc)
            return
        self.trace("kubectl annotate fop/%s %s", NAME, notes)

    def heal(self) -> None:
        """The active part is over: faults end, every slot runs, nobody is cut off."""
        self.healed = True
        self.cluster.faults.clear()
        self.faults.down.clear()
        self.faults.hangs.clear()
        self.faults.slow = self.faults.lost_ack = 0.0
        for proc in self.processes:
            proc.cut_backends = proc.cut_lease = False
            if isinstance(proc, OpReplica) and proc.kube is not None:
                if proc.kube.cut:
                    self.ops.impair(proc)
                proc.kube.cut = False
        for name, proc in self.replicas.items():
            if not proc.alive:
                self.start_replica(name)
        self.trace("faults heal; the replicas settle")

    # --- the schedule ------------------------------------------------------------------------

    def _plan_events(self) -> None:
        s = self.schedule
        super()._plan_events()
        for t, whom in s.standdowns:
            self.at(t, partial(self.stand_down, whom))
        for t, when in s.deletes:
            self.at(t, partial(self.delete_plan, when))
        for t, kind, times in s.status_faults:
            self.at(t, partial(self.status_fault, kind, times))
        for t, kind in s.requests:
            self.at(t, partial(self.annotate, kind))
        for t, index, when in s.relabels:
            self.at(t, partial(self.relabel, index, when))
        self.at(s.active, self.heal)

    def _start(self) -> None:
        for sp in self.plans:
            self.create_plan(index=sp.index)
        self._plan_events()
        if self.schedule.prepare is not None:
            self.schedule.prepare(self)
        for slot in self.slot_shard:
            self.start_replica(slot)

    def run(self) -> Result:
        violation: Violation | None = None
        try:
            with patched(self), operator_time(self):
                try:
                    self._start()
                    self.sched.drive()
                    if self.violation is None:
                        self.ops.at_end()
                except Violation as exc:
                    violation = exc
                except HarnessError as exc:
                    violation = Violation("harness", str(exc))
                finally:
                    try:
                        self.sched.shutdown()
                    except HarnessError as exc:
                        violation = violation or Violation("harness", str(exc))
        finally:
            self.checker.close()
            for proc in self.processes:  # a killed one's is closed already
                if proc.alive:
                    with suppress(sqlite3.Error):
                        proc.journal.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        violation = self.violation or violation
        if violation is not None:
            self.trace("VIOLATION %s", str(violation))
        self.counts.update({f"checked {k}": n for k, n in self.ops.checked.items()})
        return OpResult(self.schedule.seed, violation, self.sched.slices, self.sched.t,
                        self.n_writes, self.ops.n_runs, list(self._trace), self.schedule,
                        dict(self.counts), self.schedule.name, self.writes_log)


class OpResult(Result):
    def report(self) -> str:
        text = super().report()
        return text.replace("tests/reliability/test_simulation.py", REPLAY)


def run_operator_schedule(seed: int) -> Result:
    return OperatorSim(draw_operator(seed)).run()

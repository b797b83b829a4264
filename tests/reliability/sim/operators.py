"""The operator in the simulation: real `Operator` replicas over one `FakeKube` (issue 22).

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
- **work**: one worker taking keys off the operator's `WorkQueue` and calling
  `reconcile`, which runs the engine (its steps' work as simulated actors too).

Events, each from the seed: the primary failing and recovering, a replica killed (the
leader most often, also mid-step at a random event), cut from the API server (and/or the
backends) for a while, the leader standing down (SIGTERM: `elector.stop`, its work
cancelled at the next fence check, `_stand_down`, the Lease released), the plan deleted
(at once, mid-run, or while failed over) and created again under its name (sometimes
without its `dns-cutover` step), status writes answered 503 (at any write, the write of
a run's final record, or of a failed step), slow, hanging and failing backends, and
requests by annotation (failover, failback, approve, done) as kubectl would make them.
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
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import controller.operator
from controller.annotations import A_APPROVE, A_DONE, A_REQUEST
from controller.backends import Backends
from controller.crd import GROUP, PLURAL, VERSION
from controller.fencing import LostLease
from controller.kube import KubeError, Lease
from controller.model import Phase, Sample, StepStatus
from controller.operator import (
    SHUTDOWN_SECONDS,
    Elector,
    LeaderConfig,
    Operator,
    Parts,
)
from controller.plan import FailoverPlan
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
from tests.reliability.sim.world import Faults, SimBackends, open_journal

NAMESPACE = "failover"
NAME = "sim"
KEY = (GROUP, PLURAL, NAMESPACE, NAME)
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

    def describe(self) -> str:
        return (f"{super().describe()}; operator lease {self.leader}; active until "
                f"{self.active:.1f} s; stand-downs {self.standdowns}; deletes "
                f"{self.deletes}; recreate {self.recreate}; status 503s "
                f"{self.status_faults}; annotation requests {self.requests}")


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
    return OpSchedule(
        seed=seed, plan_key=key, replicas=rng.choice([2, 2, 3]), horizon=active + settle,
        lease_ttl=30.0, coordinator=False, outages=outages, crashes=crashes,
        restart=(0.5, 6.0) if rng.random() < 0.9 else None, same_name=0.3, stalls=stalls,
        partitions=partitions, clis=[], person=[], faults=faults,
        clear_after=rng.choice([1, 1, 3]), leader=leader, active=active,
        standdowns=standdowns, deletes=deletes, recreate=recreate,
        status_faults=status_faults, requests=requests)


def plan_body(key: tuple[str, bool, bool, bool], clear_after: int,
              without_dns: bool = False) -> dict[str, Any]:
    doc = plans.document(*key, clear_after=clear_after)
    if without_dns:
        doc["spec"]["steps"] = [s for s in doc["spec"]["steps"] if s["name"] != "dns-cutover"]
    doc["metadata"] = {"name": NAME, "namespace": NAMESPACE}
    return doc


# --- a replica ----------------------------------------------------------------------------


@dataclass
class OpReplica(Replica):
    """One operator process: its Operator, its client of the API server, its journal."""

    op: Operator | None = None
    kube: FakeKube | None = None
    path: str = ""
    stopping: bool = False  # standing down (SIGTERM): its loops end


class SimElector(Elector):
    """The operator's `Elector`, reading the Lease in its fence check in the actor itself:
    the real one reads it on a helper thread and waits for it in real time (so a slow
    host never holds a fence check past the renew deadline), which a schedule that is a
    pure function of its seed cannot have; here the read's time is the simulated hop."""

    def _read_lease(self, wait: float) -> Lease | None:
        return self.kube.get_lease(self.namespace, self.config.lease_name, timeout=wait)


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

    def __init__(self, sim: OperatorSim, proc: OpReplica):
        self.sim, self.proc, self.last = sim, proc, float("-inf")

    @property
    def pending(self) -> bool:
        return self.sim.sched.t - self.last >= plans.TICK

    def drain(self) -> list[Sample]:
        if not self.pending:
            return []
        self.last = self.sim.sched.t
        return self.sim.samples(self.proc)


class SimProbing:
    def __init__(self, sim: OperatorSim, proc: OpReplica):
        self.sim, self.proc = sim, proc

    def start(self, plan: FailoverPlan, backends: Backends) -> SimSamples:
        return SimSamples(self.sim, self.proc)

    def stop(self, samples: Any) -> None:
        return None

    def close(self) -> None:
        return None


@contextmanager
def operator_time(sim: Sim) -> Iterator[None]:
    """The operator module's clocks follow the schedule (as `patched` does for others)."""
    saved = controller.operator.time
    controller.operator.time = SimpleNamespace(  # type: ignore[assignment]
        time=sim.sched.now, monotonic=sim.sched.monotonic)
    try:
        yield
    finally:
        controller.operator.time = saved


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
        self.counts.update(deletes=0, recreates=0, standdowns=0, status_503=0, requests=0)
        self.checker.close()
        self.ops = OpChecker(self)
        self.checker = self.ops  # type: ignore[assignment]  # the Sim's step calls it
        self.healed = False
        self.injected: list[Fault] = []  # the status faults, with how often each hit

    def operators(self) -> list[OpReplica]:
        """The operator processes alive now."""
        return [p for p in self.processes if isinstance(p, OpReplica) and p.alive]

    def utc(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.sched.now(), dt.UTC)

    # --- the API server, as the processes reach it ------------------------------------

    def hop(self, verb: str) -> None:
        """A request's network time: a yield point (none outside an actor: a person's
        kubectl, or the Elector's lease-reading thread while its actor waits for it)."""
        if self.sched.actor_or_none() is not None:
            self.sched.sleep(self.rng.uniform(0.001, 0.02))

    def wait_until(self, ready: Callable[[], bool], seconds: float) -> None:
        self.sched.wait(seconds, _Until(ready))

    def write(self, actor: Actor, backend: str, method: str, fence: Any,
              do: Callable[[], Any]) -> Any:
        """`Sim.write`, noting the step's record in the writer's journal and who holds the
        Lease as the write lands (a backend's own audit into the journal may yield, and
        the process be paused, before the write returns)."""
        landing = (self.ops.step_record(actor.group, None if fence is None else fence.label),
                   self.ops.authority())
        n = len(self.writes)
        try:
            return super().write(actor, backend, method, fence, do)
        finally:
            for w in self.writes[n:]:
                self.ops.landing[id(w)] = landing

    def status(self) -> dict[str, Any]:
        obj = self.cluster.objects.get(KEY)
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
        proc = OpReplica(name, identity, group, incarnation=incarnation)
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
                        backends=lambda plan, audit: SimBackends(self, proc, audit),
                        probing=SimProbing(self, proc)))
        op.elector = SimElector(proc.kube, NAMESPACE, identity, op.elector.config)
        self.replicas[name] = proc
        self._add(proc)
        stop = SimStop(self, proc)
        for what, fn in (("elect", partial(op._elect, stop)), ("watch", partial(op._watch, stop)),
                         ("tick", partial(self._tick, proc))):
            self.sched.spawn(f"{group}/{what}", partial(self._guarded, proc, what, fn),
                             group=group)
        proc.loop = self.sched.spawn(f"{group}/work", partial(self._work, proc), group=group)
        self.trace("%s starts as %s", group, identity)
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
                    self.ops.mirrored(proc)
            finally:
                op.queue.done(key)

    def stand_down(self, whom: str) -> None:
        """SIGTERM: the operator's `run` epilogue — stop leading (a running step is
        cancelled at its next fence check), wait for the loops, stand down, release."""
        proc = self._whom(whom)
        if not isinstance(proc, OpReplica) or proc.stopping or proc.op is None:
            return
        self.counts["standdowns"] += 1
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

    def crash(self, whom: str) -> None:
        if not self.healed:  # (a crash drawn at a late event may come after the faults end)
            super().crash(whom)

    def partition(self, whom: str, what: str, cut: bool) -> None:
        """Cut a replica from the backends and/or ("lease") the API server, where the
        Lease is; its journal is its own (a pod's file) and stays reachable."""
        proc = self.replicas.get(whom) if whom != "holder" else self._whom(whom)
        if not isinstance(proc, OpReplica) or proc.kube is None:
            return
        if cut:
            self.counts["partitions"] += 1
        if what in ("backends", "both"):
            proc.cut_backends = cut
        if what in ("lease", "both"):
            proc.kube.cut = cut
        self.trace("%s %s %s", proc.group, "cut from" if cut else "reconnected to",
                   "the API server" if what == "lease" else what)

    # --- the plan's life ---------------------------------------------------------------------

    def create_plan(self, without_dns: bool = False) -> None:
        s = self.schedule
        obj = self.admin.create(GROUP, VERSION, NAMESPACE, PLURAL,
                                plan_body(s.plan_key, s.clear_after, without_dns))
        self.trace("kubectl create fop/%s (uid %s%s)", NAME, obj["metadata"]["uid"],
                   ", without dns-cutover" if without_dns else "")

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
        self.at(s.active, self.heal)

    def _start(self) -> None:
        self.create_plan()
        super()._start()

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

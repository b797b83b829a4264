"""The operator: FailoverPlan custom resources, reconciled by the same Engine as the CLI.

Owns the cluster side of the controller, talking to Kubernetes only through `kube.py`:

- **Watch**: list, then watch from the list's resourceVersion with bookmarks; a 410 Gone
  (or any broken watch) relists; every `resync` seconds the watch ends and a full relist
  re-queues every plan, so a missed event costs at most one resync.
- **Work queue** (`controller/workqueue.py`): one key per plan, deduplicated; one plan is
  never processed by two workers at once. A plan in a long step (a restore taking an
  hour) holds one worker; while every worker is busy, the ticker adds one for each plan
  that waits (up to `EXTRA_WORKERS`; idle extras end), so no plan waits behind another's
  step, and a thousand new plans get their first status in parallel. A plan is queued
  by the watch (a change asks for it), by the ticker when due (`_due`: routine work,
  queued behind every change and news, so a spec edit never waits behind ten thousand
  quiet ticks), and at once by its own probes when a round may change its decision
  (`News`): a failing service costs its probes' interval x consecutiveFailures, never
  a tick more, and a thousand quiet plans queue nothing between their ticks. A due
  plan that is settled (healthy, every sample passed, no run) and has no new sample is
  skipped at once (`_quiet`): no journal read, no status built.
- **Liveness** (`healthy`, the ticker's beat for /healthz): the election, watch and
  ticker threads run and no plan has waited `stuck_after` for a worker — the health of
  the controller, never the length of a step.
- **Shards** (`controller/sharding.py`, optional): a replica given a shard watches and
  reconciles only that shard's plans and elects its leader on that shard's own Lease, so
  each plan has exactly one leader and a shard's failover never moves another shard. A
  plan moved to another shard, even mid-run, is acted on by one leader at a time
  (`controller/operator_fence.py`: each plan's own fence, and a Lease's duration for an
  arrival to settle).
- **Leader election**: a coordination.k8s.io/v1 Lease (15 s / 10 s / 2 s by default). Only
  the leader probes and acts. Another holder's Lease has expired when this replica has
  seen it unchanged for its duration on its own monotonic clock (client-go's rule), so
  clock skew never decides; renewals write the configured duration. The Lease's
  `leaseTransitions`, which grows with every change of holder, is the leader's fencing
  token (`Elector.token`). The engine's fence re-reads the Lease before every step and
  every retry period while a step's work runs (`LeaderConfig.guard_every`); a leader that
  lost it, or whose last renewal is older than the renew deadline, or that is shutting
  down, raises `LostLease` and its running step is cancelled (left running for the next
  leader). On stop the operator is done within `SHUTDOWN_SECONDS` and releases the Lease.
- **Record** (`controller/operator_status.py`): every committed journal change of a plan
  is mirrored into its status, one write per engine cycle, fenced by the leader's token
  (`fencingToken`, `fencingHolder`), so a deposed leader never overwrites its
  successor's status; each change of meaning becomes an Event. A failed status write
  never changes the run's course (only a step about to start waits for its record). A
  replica that takes over adopts the run from the status and continues it without
  repeating finished steps, and the policy's decision, trip and probe counts from
  `status.policy` (the samples stay in the writer's journal; the new leader's own probes
  refill the window).
- **One object, one record**: the journal's record of a plan name is bound to the
  object's uid (`_bind`); a plan deleted and created again starts afresh and the old
  record is kept as `NAME@UID` (`Journal.retire_plan`). A runtime is rebuilt when the
  uid or generation changes — except that while a run is active or the plan is failed
  over, an edit of its sites or backends is held (`controller/operator_spec.py`), so a
  failback reverts the objects the failover changed.
- **Requests from outside** (`controller/operator_requests.py`): annotations
  `failover.example.io/request`, `/approve` and `/done`, each validated, then claimed
  (removed with a fenced compare-and-swap write) before it is acted on, so two replicas
  or two cycles never act on one twice; one that cannot be acted on is removed all the
  same and answered with a Warning Event saying what is allowed.
- **Deletion** (`controller/operator_deletion.py`): a finalizer, placed before a plan's
  first run can start a step, holds a plan being deleted while a run is active; the run
  finishes (or, never approved and with no step run, is withdrawn), then the plan goes
  and its record is retired. A plan that never ran has no finalizer: it goes at once.

Seams (`controller/operator_parts.py`). The operator talks to the API server through
`kube.KubeAPI` and builds each plan's engine from `Parts` (clock, how a step's work
runs, backends, where samples come from: `Probing`); its election and watch loops wait
on a `Stop`. In a process these are `Kube`, the wall clock, threads, `SharedProbes` and
a `threading.Event`; the safety simulation (`tests/reliability/sim/operators.py`) runs
real replicas over `controller.testing_kube.FakeKube` with its own, on its scheduler.

Partitions. A replica that loses the API server stops acting before its Lease can
expire: it stops believing it leads `renew_deadline` after its last renewal, its running
step's fence check fails within `guard_every` after that (renew deadline + guard_every <
lease duration), the step's work is cancelled before its next write and stays recorded
as running, not finished, for the next leader to resume; when its network comes back,
its status writes are refused (a newer token is stored) and it follows. A replica that
loses a backend (a traffic API, a DNS server, a database host) but not the API server
keeps its Lease: the step fails or times out as the plan says (retries, `timeout`,
`onFailure`), and the run goes on, fails or reverts under the same leader. A replica
that loses both behaves as for the API server: it stops, and a replica that can reach
the API server leads and resumes the step; a backend call hanging when the cancel comes
cannot be recalled, but a target that compares tokens refuses its late write. So the
replica in a site cut off from the cluster never acts on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from controller import kube as k8s
from controller import metrics
from controller.annotations import A_APPROVE, A_DONE, A_REQUEST
from controller.api import NotReady
from controller.backends import Backends
from controller.clock import Clock
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.elector import Elector, LeaderConfig
from controller.engine.cycle import Cycle, StoodBy
from controller.fencing import LostLease
from controller.journal import Journal
from controller.loop import Engine
from controller.operator_deletion import drop_finalizer, held, invalid_waits, waits_for, withdraw
from controller.operator_fence import PlanFences
from controller.operator_parts import Parts, Probing, SharedProbes, Stop
from controller.operator_requests import Changed, Requests
from controller.operator_spec import held_reason, holding, parse, pinned
from controller.operator_status import PlanRuntime, StatusWriter
from controller.plan import FailoverPlan, PlanError
from controller.records.archive import flush
from controller.secrets import KubeSecretKey, Secrets
from controller.sharding import Shard, lease_name
from controller.workqueue import WorkQueue

log = logging.getLogger(__name__)

QUIET_TICKS = 5
WATCH_SECONDS = 5
SHUTDOWN_SECONDS = 20.0  # within the pod's 30 s grace: steps cancelled, Lease released
FLUSH_SECONDS = 8.0  # then the records store's last chance, still within that grace
EXTRA_WORKERS = 64  # added while every worker is busy (each long step holds one)
IDLE_SECONDS = 30.0  # an extra worker idle this long ends
FREEZE_GROWTH = 1.1  # the plans held grew by a tenth since the last `_freeze`: again


class Operator:
    def __init__(self, kube: k8s.KubeAPI, *, namespace: str, journal: Journal, identity: str,
                 leader: LeaderConfig | None = None, tick: float = 1.0, resync: float = 300.0,
                 workers: int = 4, beat: Callable[[], None] = lambda: None,
                 stuck_after: float | None = None, parts: Parts | None = None,
                 shard: Shard | None = None):
        self.kube, self.namespace, self.journal = kube, namespace, journal
        self.shard = shard  # None: every plan of the namespace
        self.identity, self.tick, self.resync, self.workers = identity, tick, resync, workers
        # a plan queued this long without a worker means the controller is stuck
        self.stuck_after = stuck_after if stuck_after is not None else max(30.0, 10 * tick)
        self._pool = threading.Lock()
        self._threads: list[threading.Thread] = []  # elector, watch, ticker
        self._pool_threads: list[threading.Thread] = []  # workers, extra ones included
        self._busy = 0  # workers in a reconcile
        leader = leader or LeaderConfig()
        self.elector = Elector(kube, namespace, identity, dataclasses.replace(
            leader, lease_name=lease_name(leader.lease_name, shard)), base=leader.lease_name)
        # one actor per plan when plans move between shards (`operator_fence`)
        self.fences = PlanFences(kube, namespace, identity, self.elector, self._owns,
                                 settle=leader.lease_duration)
        self.queue = WorkQueue()
        self.beat = beat
        self.secrets = Secrets(kube_reader=self._read_secret)
        self._objects: dict[str, dict[str, Any]] = {}
        self._runtimes: dict[str, PlanRuntime] = {}
        self._uids: dict[str, str] = {}  # plan name -> the uid its journal record is bound to
        self._lock = threading.Lock()
        self._synced = False
        self._frozen_at = 0  # plans held at the last `_freeze`
        self.parts = parts or Parts()
        # a plan whose probes bring news is queued at once, not on its next tick
        self._probes: Probing = self.parts.probing or SharedProbes(on_news=self.queue.add)
        self.writer = StatusWriter(kube, namespace, journal, elector=lambda: self.elector,
                                   identity=identity, fences=self.fences,
                                   clock=self.parts.clock or Clock(),
                                   runtimes=self._runtimes, keep=self._wrote)
        self.requests = Requests(self.writer)
        journal.listeners.append(self.writer.mirror)

    def require_synced(self) -> None:
        """For /readyz: raise until the first list of FailoverPlans has come back, and
        while this replica yields to another deployment that selects its plans."""
        if not self._synced:
            raise NotReady("FailoverPlans not listed yet")
        if self.elector.rival is not None:  # another deployment selects our plans
            raise NotReady(self.elector.why_not())

    # --- the threads ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set: election, watch, ticker and workers; then stop within
        `SHUTDOWN_SECONDS` (a running step is cancelled at its next fence check and left
        running for the next leader) and release the Lease at once."""
        self._freeze()  # modules and the kubernetes client: 100,000 objects
        self._threads = [threading.Thread(target=fn, args=(stop,), name=name, daemon=True)
                         for name, fn in [("elector", self._elect), ("watch", self._watch),
                                          ("ticker", self._ticker)]]
        for t in self._threads:
            t.start()
        for _ in range(self.workers):
            self._add_worker(stop, extra=False)
        try:
            # never a wait without a timeout: `stop` is set from a signal handler, which
            # runs on this very thread and may run between Event.wait's look at the flag
            # and its sleep -- the wake-up is then lost, and SIGTERM with it
            while not stop.wait(0.5):
                pass
        finally:
            # the plans' archivers first: the elector's thread may stand down as it stops
            # (its last round finds the lead gone), dropping the runtimes that hold them
            archivers = [rt.engine.ender.archiver for rt in list(self._runtimes.values())]
            self.elector.stop()
            self.queue.close()  # idle workers end at once
            deadline = time.monotonic() + SHUTDOWN_SECONDS
            with self._pool:
                threads = [*self._threads, *self._pool_threads]
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            running = [t.name for t in threads if t.is_alive()]
            if running:
                log.warning("%s stops with %s still running; what they run stays recorded "
                            "as running for the next leader", self.identity,
                            ", ".join(running))
            self._stand_down()
            self._probes.close()
            self.elector.release()
            # runs that ended while the records store failed: one last, bounded attempt
            flush(archivers, deadline=time.monotonic() + FLUSH_SECONDS)

    def _elect(self, stop: Stop) -> None:
        while not stop.is_set():
            if not self.elector.round():
                self._stand_down()
            stop.wait(self.elector.config.retry_period)

    def _ticker(self, stop: threading.Event) -> None:
        """Every tick: the health beat (when the controller works), the plans that are
        due, and, when every worker is busy, one more worker for each plan that waits."""
        while not stop.wait(self.tick):
            if self.healthy():
                self.beat()
            if self.elector.leading():
                with self._lock:
                    keys = list(self._objects)
                for key in keys:
                    if self._due(key):
                        self.queue.add(key, urgent=False)  # behind every change and news
            if len(self._runtimes) >= FREEZE_GROWTH * self._frozen_at + 10:
                self._freeze()
            with self._pool:
                waiting = len(self.queue) if self._busy >= len(self._pool_threads) else 0
                room = self.workers + EXTRA_WORKERS - len(self._pool_threads)
            if min(waiting, room) > 0:
                log.info("%d plans wait and every worker is busy (a long step holds one "
                         "each, or many plans came at once): %d workers added", waiting,
                         min(waiting, room))
            for _ in range(min(waiting, room)):
                self._add_worker(stop, extra=True)

    def _freeze(self) -> None:
        """Keep what is held by now (the modules, the plans' runtimes and objects) out of
        every later garbage collection: a full pass over the objects of 1,000 plans holds
        every thread for ~0.4 s (a probe's timeout, a status change among them), and
        one over 10,000 for seconds. Called at start and as the plans held grow by a
        tenth. Freezing costs nothing and what is frozen is still freed by reference
        counting, but a frozen runtime replaced later (a spec edit) is not collected: its
        cycles stay, at most one runtime per plan per freeze."""
        gc.freeze()
        self._frozen_at = len(self._runtimes)

    def healthy(self) -> bool:
        """Liveness, not progress of a step: the election, watch and ticker threads run,
        and no plan has waited `stuck_after` seconds for a worker (a plan in a long step
        holds one worker, and the ticker adds workers while every one is busy, so plans
        wait only when the controller itself is stuck)."""
        return (all(t.is_alive() for t in self._threads)
                and self.queue.waited() < self.stuck_after)

    def _add_worker(self, stop: threading.Event, *, extra: bool) -> None:
        with self._pool:
            self._pool_threads = [t for t in self._pool_threads if t.is_alive()]
            t = threading.Thread(target=self._work, args=(stop, extra), daemon=True,
                                 name=f"worker-{len(self._pool_threads)}")
            self._pool_threads.append(t)
        t.start()

    def _due(self, key: str) -> bool:
        """A plan is reconciled on a tick when it has new samples or an active run, and at
        least every `QUIET_TICKS` ticks otherwise (time-based rules such as dwell and
        overdue human steps); a thousand quiet plans cost little."""
        rt = self._runtimes.get(key)
        return (rt is None or rt.active or rt.dirty or rt.scheduler.pending
                or time.monotonic() - rt.reconciled >= QUIET_TICKS * self.tick)

    def _watch(self, stop: Stop) -> None:
        """Keep `_objects`, the plans of our shard, as the API server has them, and queue
        each that asks for a reconcile. A plan that leaves our shard (relabelled) is
        gone for us, as if deleted: its probes stop, its record stays; the leader of its
        new shard adopts it from its status."""
        selector = self.shard.label_selector if self.shard is not None else None
        while not stop.is_set():
            try:
                listed = self.kube.list(GROUP, VERSION, self.namespace, PLURAL,
                                        label_selector=selector)
                mine = {o["metadata"]["name"]: o for o in listed.items if self._owns(o)}
                with self._lock:
                    held = self._objects
                    gone = [k for k in held if k not in mine]  # in order: replays
                    if self._synced:  # a relist: a plan new to us may have moved in
                        self.fences.entered(*(o for k, o in mine.items() if k not in held))
                    self._objects = {k: _same(held.get(k), o) for k, o in mine.items()}
                self._synced = True
                for key in [*self._objects, *gone]:  # the unchanged ones: routine work
                    self.queue.add(key, urgent=key in gone or _asks(held.get(key),
                                                                    self._objects[key]))
                rv, listed_at = listed.resource_version, time.monotonic()
                while not stop.is_set() and time.monotonic() - listed_at < self.resync:
                    # short server-side timeouts: a stop is noticed within WATCH_SECONDS;
                    # each watch goes on from the last resourceVersion seen (or bookmarked)
                    for event in self.kube.watch(GROUP, VERSION, self.namespace, PLURAL,
                                                 resource_version=rv,
                                                 timeout_seconds=WATCH_SECONDS,
                                                 label_selector=selector):
                        rv = event.resource_version or rv
                        if event.type == "BOOKMARK":
                            continue
                        name = event.object["metadata"]["name"]
                        with self._lock:
                            before = self._objects.get(name)
                            if event.type == "DELETED" or not self._owns(event.object):
                                self._objects.pop(name, None)
                            else:
                                if before is None:  # new to us: created, or moved in
                                    self.fences.entered(event.object)
                                self._objects[name] = _same(before, event.object)
                        if event.type != "MODIFIED" or _asks(before, event.object):
                            self.queue.add(name)
            except k8s.Gone:
                log.info("watch of %s: resourceVersion expired; relisting", PLURAL)
            except (k8s.KubeError, ConnectionError) as exc:
                log.warning("watch of %s: %s; relisting in 1 s", PLURAL, exc)
                stop.wait(1.0)

    def _owns(self, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        return self.shard is None or self.shard.owns(self.namespace, meta["name"],
                                                     meta.get("labels") or {})

    def _work(self, stop: threading.Event, extra: bool = False) -> None:
        """Reconcile queued plans; an extra worker ends after `IDLE_SECONDS` idle."""
        idle = time.monotonic()
        while not stop.is_set():
            key = self.queue.get(timeout=IDLE_SECONDS)  # `close` ends the wait on stop
            if key is None:
                if extra and time.monotonic() - idle > IDLE_SECONDS:
                    with self._pool:
                        self._pool_threads.remove(threading.current_thread())
                    return
                continue
            with self._pool:
                self._busy += 1
            try:
                self.reconcile(key)
            except LostLease as exc:
                log.warning("%s stops acting on %s: %s", self.identity, key, exc)
            except Changed as exc:  # expected: the newer version is on its way
                log.info("%s", exc)
            except Exception:
                log.exception("reconcile of %s failed; retrying on the next cycle", key)
            finally:
                with self._pool:
                    self._busy -= 1
                self.queue.done(key)
                idle = time.monotonic()

    # --- reconcile --------------------------------------------------------------------------

    def reconcile(self, name: str) -> None:
        if not self.elector.leading():
            return
        with self._lock:
            obj = self._objects.get(name)
        if obj is None:
            self._forget(name)
            return
        if self.fences.arriving(name, obj):  # from another shard: its old leader stops
            return
        meta = obj["metadata"]
        deleting = bool(meta.get("deletionTimestamp"))
        if deleting and not held(obj):
            self._forget(name)  # nothing of ours holds it (no run ever): it goes without us
            return
        self._bind(name, meta.get("uid"))
        rt = self._runtime(name, obj)
        if rt is None:  # invalid: not watched; its status says why
            if deleting:
                self._deleting_invalid(name, obj)
            return
        rt.obj = obj
        if self._quiet(rt, deleting=deleting):
            rt.reconciled = time.monotonic()
            return
        run = self.journal.active_run(name)
        rt.deleting = waits_for(self.journal, name, run) if deleting and run is not None else None
        self.requests.act(rt, obj, deleting=deleting)
        rt.quiet_until = None
        if not deleting:
            cycle = self._cycle(rt)
            if not any(isinstance(e, StoodBy) for e in cycle.events):
                rt.quiet_until = rt.engine.store.quiet_until(cycle.state)
        elif run is not None:
            if withdraw(self.journal, self.elector.fence, name, run, time.time()):
                run = None  # nothing changed yet: nothing to finish
            else:  # finish what was started: a half-switched world is worse than a late delete
                rt.engine.tick(rt.scheduler.drain())
                run = self.journal.active_run(name)
                rt.deleting = waits_for(self.journal, name, run) if run is not None else None
        if deleting and run is None:
            self._release(name, obj)
            return
        self.writer.mirror(name, listener=False)
        if rt.deleting is not None and run is not None:
            self.writer.event(obj, "Warning", "DeletionDeferred", rt.deleting,
                        once=(meta.get("uid"), "DeletionDeferred", run.id))
        rt.reconciled = time.monotonic()
        rt.active = self.journal.active_run(name) is not None

    def _cycle(self, rt: PlanRuntime) -> Cycle:
        """One engine cycle whose journal changes (a decision, the state, a readiness
        check) reach the status in one write, by the reconcile's `_mirror` after it,
        rather than one write each — except a new phase and a step about to start, which
        are written at once, as always (`_mirror`). A cycle that raises leaves the plan
        dirty: its status is written on the next tick."""
        rt.batching = True
        try:
            return rt.engine.tick(rt.scheduler.drain())
        except BaseException:
            rt.dirty = True
            raise
        finally:
            rt.batching = False

    def _quiet(self, rt: PlanRuntime, *, deleting: bool) -> bool:
        """Nothing for a cycle to do: the plan is settled (`Store.quiet_until`, checked by
        the last full cycle, which this one would repeat), no sample waits, no request
        annotation, no run, no status to write again, no deletion. Most reconciles of a
        thousand quiet plans end here, with no journal read and no status built; a
        sample, a change of the object or a readiness check due ends the quiet."""
        notes = rt.obj["metadata"].get("annotations") or {}
        return (rt.quiet_until is not None and not deleting and not rt.active
                and not rt.dirty and rt.held is None and not rt.scheduler.pending
                and not any(k in notes for k in (A_REQUEST, A_APPROVE, A_DONE))
                and rt.engine.clock.now() < rt.quiet_until)

    def _bind(self, name: str, uid: str | None) -> None:
        """Everything is the record of one object (its uid), not of a name: when the
        object named `name` is not the one the journal's record of `name` belongs to (it
        was deleted and created again), that record is retired under `NAME@OLDUID`
        (kept, never lost, never inherited) and the new object starts afresh."""
        if not uid or self._uids.get(name) == uid:
            return
        bound = self.journal.plan_uid(name)
        if bound is not None and bound != uid:
            self._forget(name)
            self.journal.retire_plan(name, as_name=f"{name}@{bound}")
            log.warning("%s %s is a new object (uid %s); the record of the deleted one "
                        "(uid %s) is kept as %s@%s", KIND, name, uid, bound, name, bound)
        if bound != uid:
            self.journal.bind_plan_uid(name, uid)
        self._uids[name] = uid

    def _runtime(self, name: str, obj: dict[str, Any]) -> PlanRuntime | None:
        """The plan's runtime for the object as it is now: built from its spec, or — while
        a run is active or the plan is failed over — from the spec the plan runs with
        (`appliedSpec`), when the new one changes its sites or backends or is invalid: a
        failback must revert the objects the failover changed. None when the plan is
        invalid and nothing holds it (its status says why)."""
        meta = obj["metadata"]
        generation, uid = meta.get("generation"), meta.get("uid")
        rt = self._runtimes.get(name)
        if rt is not None and rt.uid == uid and (generation == rt.generation or (
                generation == rt.held_for and holding(self.journal, name))):
            return rt
        status = obj.get("status") or {}
        self.writer.adopt(name, status)  # an invalid plan's run is known too
        spec: dict[str, Any] = obj.get("spec") or {}
        problems: list[str] | None = None
        plan: FailoverPlan | None
        try:
            plan = parse(self.namespace, name, spec)
        except PlanError as err:
            plan, problems = None, err.problems
        mine = rt is not None and rt.uid == uid
        applied = ((rt.generation, rt.spec) if rt is not None and mine
                   else (status.get("appliedGeneration"), status.get("appliedSpec")))
        held = None
        if applied[1] is not None and applied[1] != spec and (
                plan is None or pinned(applied[1]) != pinned(spec)) and holding(self.journal, name):
            try:
                old = parse(self.namespace, name, applied[1])
            except PlanError:
                old = None  # not runnable either: nothing better to hold on to
            if old is not None:
                held = held_reason(self.journal, name, generation, applied[0], problems)
                if rt is not None and mine and rt.spec == applied[1]:
                    if rt.held != held:
                        log.warning("%s %s: %s", KIND, name, held)
                    rt.held, rt.held_for = held, generation
                    return rt
                plan, spec, problems, generation = old, applied[1], None, applied[0]
        if plan is None:
            self._forget(name)
            self.writer.write(name, obj, problems=problems, generation=generation)
            return None
        if held is not None:
            log.warning("%s %s: %s", KIND, name, held)
        if rt is not None:
            self._probes.stop(rt.scheduler)
        audit = _audit(self.journal, plan.name)
        engine = Engine(plan, self.journal, holder=self.identity, fence=self.fences.fence(name),
                        token=self.elector.token,
                        renew_every=self.elector.config.guard_every,
                        clock=self.parts.clock, spawn=self.parts.spawn,
                        backends=self.parts.backends(plan, audit) if self.parts.backends
                        else Backends(plan, secrets=self.secrets, audit=audit))
        scheduler = self._probes.start(plan, engine.backends)
        rt = PlanRuntime(plan, uid, generation, engine, scheduler, status=status, obj=obj,
                         spec=spec, held=held,
                         held_for=meta.get("generation") if held is not None else None)
        self._runtimes[name] = rt
        return rt

    # --- deletion ---------------------------------------------------------------------------

    def _deleting_invalid(self, name: str, obj: dict[str, Any]) -> None:
        """An invalid plan being deleted: released unless a run is active, which cannot go
        on without a valid spec — then it is held, and the Event says what to do."""
        run = self.journal.active_run(name)
        if run is None:
            self._release(name, obj)
            return
        self.writer.event(obj, "Warning", "DeletionDeferred", invalid_waits(run),
                          once=(obj["metadata"].get("uid"), "DeletionDeferred", run.id))

    def _release(self, name: str, obj: dict[str, Any]) -> None:
        """No run holds the deleting plan: let it go, and retire its record (kept under
        `NAME@UID`), so a plan created again under the name starts afresh."""
        self._forget(name)
        if held(obj):
            self.elector.fence()  # a deposed leader must not release a plan mid-run
            with contextlib.suppress(k8s.NotFound):  # already gone: nothing to release
                self.writer.patch(name, drop_finalizer)
        uid = obj["metadata"].get("uid")
        if uid and self.journal.plan_uid(name) in (uid, None):
            self.journal.retire_plan(name, as_name=f"{name}@{uid}")
        self._uids.pop(name, None)
        self.writer.forget(name)

    def _forget(self, name: str) -> None:
        rt = self._runtimes.pop(name, None)
        if rt is not None:
            self._probes.stop(rt.scheduler)
            metrics.forget(name)  # a replica that stops leading exports none of it

    def _stand_down(self) -> None:
        """No longer the leader: stop probing; the journal and status keep everything."""
        for name in list(self._runtimes):
            self._forget(name)
        self._uids.clear()  # whoever leads next may have changed the record

    def _wrote(self, name: str, obj: dict[str, Any]) -> None:
        """Keep the object as our write left it, the newest we know, so the next write
        starts from it without reading it first."""
        with self._lock:
            if name in self._objects:
                self._objects[name] = obj

    def _read_secret(self, ref: KubeSecretKey) -> bytes:
        return self.kube.read_secret(ref.namespace or self.namespace, ref.name, ref.key)


def _asks(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether a change of a plan asks for a reconcile: its spec, annotations (requests),
    finalizers, deletion or identity changed. A status write (ours, mostly) does not: it
    would re-queue the plan after every write."""
    if before is None:
        return True
    old, new = before.get("metadata", {}), after.get("metadata", {})
    return (before.get("spec") != after.get("spec") or any(
        old.get(k) != new.get(k) for k in ("uid", "generation", "annotations", "finalizers",
                                           "deletionTimestamp", "labels")))


def _same(held: dict[str, Any] | None, seen: dict[str, Any]) -> dict[str, Any]:
    """The object to keep: the one held when `seen` is the same version of it (our own
    write, kept by `_wrote`, comes back on the watch and in a relist), so a plan is held
    once, not twice."""
    if held is not None and held["metadata"].get("resourceVersion") == \
            seen["metadata"].get("resourceVersion"):
        return held
    return seen


def _audit(journal: Journal, plan: str) -> Callable[..., None]:
    def audit(**kwargs: Any) -> None:
        journal.audit(plan=plan, **kwargs)

    return audit

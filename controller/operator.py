"""The operator: FailoverPlan custom resources, reconciled by the same Engine as the CLI.

Owns the cluster side of the controller, talking to Kubernetes only through `kube.py`:

- **Watch**: list, then watch from the list's resourceVersion with bookmarks; a 410 Gone
  (or any broken watch) relists; every `resync` seconds the watch ends and a full relist
  re-queues every plan, so a missed event costs at most one resync.
- **Work queue**: one key per plan, deduplicated; several workers, but one plan is never
  processed by two at once, and a slow plan (a restore taking an hour) occupies one worker
  while the others go on.
- **Leader election**: a coordination.k8s.io/v1 Lease (15 s / 10 s / 2 s by default). Only
  the leader probes and acts; before every step that changes the world the engine's fence
  re-reads the Lease, so a deposed leader stops at once (`LostLease`), before the change.
- **Record**: every committed journal change of a plan is mirrored into its status
  (through the status subresource, conflict-retried) before the step goes on, and each
  change becomes an Event. A replica that takes over adopts the run from the status and
  continues it without repeating finished steps.
- **Requests from outside**: annotations `failover.example.io/request` (failover or
  failback, with `reason`, `requested-by`, `level`), `/approve` (a run id, optionally
  `RUN:STEP`, with `approved-by`) and `/done` (`RUN:STEP`, with `done-by`) — so kubectl
  and the CLI both work. An annotation is claimed (removed with a compare-and-swap write)
  before it is acted on, so two replicas or two cycles never act on it twice.
- **Deletion**: a finalizer holds a plan being deleted while a run is active; the run
  finishes (the world is never left half-switched), then the finalizer is removed.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controller import kube as k8s
from controller import status as status_mod
from controller.backends import Backends
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.executor import LostLease
from controller.journal import Journal
from controller.loop import Engine, observe
from controller.plan import FailoverPlan, PlanError, parse_plan
from controller.probes.scheduler import ProbeScheduler, SharedLoop
from controller.secrets import KubeSecretKey, Secrets, redact

log = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"
A_REQUEST, A_REASON, A_BY, A_LEVEL = (f"{GROUP}/{k}" for k in
                                      ("request", "reason", "requested-by", "level"))
A_APPROVE, A_APPROVED_BY = f"{GROUP}/approve", f"{GROUP}/approved-by"
A_DONE, A_DONE_BY = f"{GROUP}/done", f"{GROUP}/done-by"
_REQUEST_KEYS = (A_REQUEST, A_REASON, A_BY, A_LEVEL)
QUIET_TICKS = 5
WATCH_SECONDS = 5


@dataclass(frozen=True)
class LeaderConfig:
    lease_name: str = "failover-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class Elector:
    """Leader election on one Lease; `fence()` is the engine's check before each step."""

    def __init__(self, kube: k8s.Kube, namespace: str, identity: str, config: LeaderConfig):
        self.kube, self.namespace, self.identity, self.config = kube, namespace, identity, config
        self._renewed: float | None = None
        self.transitions = 0

    def leading(self) -> bool:
        return (self._renewed is not None
                and time.monotonic() - self._renewed < self.config.renew_deadline)

    def round(self) -> bool:
        """One election round: create, renew or take over the Lease; True when we lead."""
        was = self.leading()
        try:
            lease = self.kube.acquire_lease(self.namespace, self.config.lease_name,
                                            holder=self.identity,
                                            duration_seconds=int(self.config.lease_duration))
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("lease %s: %s", self.config.lease_name, exc)
            lease = None
        if lease is not None:
            self._renewed = time.monotonic()
        elif self._renewed is not None and not self.leading():
            self._renewed = None
        if self.leading() != was:
            self.transitions += 1
            log.warning("%s %s leadership of %s/%s", self.identity,
                        "acquired" if self.leading() else "lost", self.namespace,
                        self.config.lease_name)
        return self.leading()

    def fence(self) -> None:
        """Raise LostLease unless the Lease, read now, is ours and unexpired."""
        if not self.leading():
            raise LostLease(f"{self.identity} does not lead {self.config.lease_name}")
        try:
            lease = self.kube.get_lease(self.namespace, self.config.lease_name)
        except (k8s.KubeError, ConnectionError) as exc:
            raise LostLease(f"cannot confirm the lease: {exc}") from None
        if lease is None or not lease.held_by(self.identity, dt.datetime.now(dt.UTC)):
            self._renewed = None
            raise LostLease(f"lease {self.config.lease_name} is held by "
                            f"{lease.holder if lease else 'nobody'}, not {self.identity}")

    def release(self) -> None:
        if self._renewed is None:
            return
        self._renewed = None
        try:
            lease = self.kube.get_lease(self.namespace, self.config.lease_name)
            if lease is not None and lease.holder == self.identity:
                self.kube.release_lease(lease)
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("could not release lease %s: %s", self.config.lease_name, exc)


class WorkQueue:
    """Deduplicating keys; a key being processed is never handed to a second worker."""

    def __init__(self) -> None:
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()
        self._busy: set[str] = set()
        self._cond = threading.Condition()

    def add(self, key: str) -> None:
        with self._cond:
            if key in self._dirty:
                return
            self._dirty.add(key)
            if key not in self._busy:
                self._queue.append(key)
                self._cond.notify()

    def get(self, timeout: float) -> str | None:
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            if not self._queue:
                return None
            key = self._queue.popleft()
            self._dirty.discard(key)
            self._busy.add(key)
            return key

    def done(self, key: str) -> None:
        with self._cond:
            self._busy.discard(key)
            if key in self._dirty:  # changed while we worked on it: once more
                self._queue.append(key)
                self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)


@dataclass
class PlanRuntime:
    """What the leader keeps per plan between reconciles."""

    plan: FailoverPlan
    generation: int | None
    engine: Engine
    scheduler: ProbeScheduler
    status: dict[str, Any] = field(default_factory=dict)
    obj: dict[str, Any] = field(default_factory=dict)
    reconciled: float = 0.0  # time.monotonic() of the last reconcile
    active: bool = False  # a run was active after the last reconcile


class Operator:
    def __init__(self, kube: k8s.Kube, *, namespace: str, journal: Journal, identity: str,
                 leader: LeaderConfig | None = None, tick: float = 1.0, resync: float = 300.0,
                 workers: int = 4, beat: Callable[[], None] = lambda: None):
        self.kube, self.namespace, self.journal = kube, namespace, journal
        self.identity, self.tick, self.resync, self.workers = identity, tick, resync, workers
        self.elector = Elector(kube, namespace, identity, leader or LeaderConfig())
        self.queue = WorkQueue()
        self.beat = beat
        self.secrets = Secrets(kube_reader=self._read_secret)
        self._objects: dict[str, dict[str, Any]] = {}
        self._runtimes: dict[str, PlanRuntime] = {}
        self._lock = threading.Lock()
        self._synced = False
        self._probes = SharedLoop()  # every plan's probes on one loop and thread
        journal.listeners.append(self._mirror)

    def require_synced(self) -> None:
        """For /readyz: raise until the first list of FailoverPlans has come back."""
        if not self._synced:
            raise RuntimeError("FailoverPlans not listed yet")

    # --- the threads ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Run until `stop` is set: election, watch, ticker and workers; then clean up."""
        threads = [threading.Thread(target=fn, args=(stop,), name=name, daemon=True)
                   for name, fn in [("elector", self._elect), ("watch", self._watch),
                                    ("ticker", self._ticker)]]
        threads += [threading.Thread(target=self._work, args=(stop,), name=f"worker-{i}",
                                     daemon=True) for i in range(self.workers)]
        for t in threads:
            t.start()
        try:
            stop.wait()
        finally:
            for t in threads:
                t.join(timeout=30)
            self._stand_down()
            self._probes.close()
            self.elector.release()

    def _elect(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.elector.round():
                self._stand_down()
            stop.wait(self.elector.config.retry_period)

    def _ticker(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick):
            if not len(self.queue):  # idle is healthy; a backed-up queue beats only per reconcile
                self.beat()
            if self.elector.leading():
                with self._lock:
                    keys = list(self._objects)
                for key in keys:
                    if self._due(key):
                        self.queue.add(key)

    def _due(self, key: str) -> bool:
        """A plan is reconciled on a tick when it has new samples or an active run, and at
        least every `QUIET_TICKS` ticks otherwise (time-based rules such as dwell and
        overdue human steps); a thousand quiet plans cost little."""
        rt = self._runtimes.get(key)
        return (rt is None or rt.active or rt.scheduler.pending
                or time.monotonic() - rt.reconciled >= QUIET_TICKS * self.tick)

    def _watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                listed = self.kube.list(GROUP, VERSION, self.namespace, PLURAL)
                with self._lock:
                    gone = set(self._objects) - {o["metadata"]["name"] for o in listed.items}
                    self._objects = {o["metadata"]["name"]: o for o in listed.items}
                self._synced = True
                for key in [*self._objects, *gone]:
                    self.queue.add(key)
                rv, listed_at = listed.resource_version, time.monotonic()
                while not stop.is_set() and time.monotonic() - listed_at < self.resync:
                    # short server-side timeouts: a stop is noticed within WATCH_SECONDS;
                    # each watch goes on from the last resourceVersion seen (or bookmarked)
                    for event in self.kube.watch(GROUP, VERSION, self.namespace, PLURAL,
                                                 resource_version=rv,
                                                 timeout_seconds=WATCH_SECONDS):
                        rv = event.resource_version or rv
                        if event.type == "BOOKMARK":
                            continue
                        name = event.object["metadata"]["name"]
                        with self._lock:
                            if event.type == "DELETED":
                                self._objects.pop(name, None)
                            else:
                                self._objects[name] = event.object
                        self.queue.add(name)
            except k8s.Gone:
                log.info("watch of %s: resourceVersion expired; relisting", PLURAL)
            except (k8s.KubeError, ConnectionError) as exc:
                log.warning("watch of %s: %s; relisting in 1 s", PLURAL, exc)
                stop.wait(1.0)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self.reconcile(key)
                self.beat()
            except Exception:
                log.exception("reconcile of %s failed; retrying on the next cycle", key)
            finally:
                self.queue.done(key)

    # --- reconcile --------------------------------------------------------------------------

    def reconcile(self, name: str) -> None:
        if not self.elector.leading():
            return
        with self._lock:
            obj = self._objects.get(name)
        if obj is None:
            self._forget(name)
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self._deleting(name, obj)
            return
        if FINALIZER not in meta.get("finalizers", []):
            obj = self._patch(name, _add_finalizer)
        rt = self._runtime(name, obj)
        if rt is None:
            return
        rt.obj = obj
        self._requests(rt, obj)
        rt.engine.tick(rt.scheduler.drain())
        self._mirror(name)
        rt.reconciled = time.monotonic()
        rt.active = self.journal.active_run(name) is not None

    def _runtime(self, name: str, obj: dict[str, Any]) -> PlanRuntime | None:
        generation = obj["metadata"].get("generation")
        rt = self._runtimes.get(name)
        if rt is not None and rt.generation == generation:
            return rt
        try:
            plan = parse_plan({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                               "metadata": {"name": name}, "spec": obj.get("spec", {})},
                              f"{KIND} {self.namespace}/{name}")
        except PlanError as err:
            self._write_status(name, obj, problems=err.problems, generation=generation)
            self._forget(name)
            return None
        if rt is not None:
            self._probes.stop(rt.scheduler)
        self._adopt(name, obj.get("status") or {})
        engine = Engine(plan, self.journal, holder=self.identity, fence=self.elector.fence,
                        backends=Backends(plan, secrets=self.secrets,
                                          audit=_audit(self.journal, plan.name)))
        scheduler = observe(plan, engine.backends)
        self._probes.start(scheduler)
        rt = PlanRuntime(plan, generation, engine, scheduler, status=obj.get("status") or {},
                         obj=obj)
        self._runtimes[name] = rt
        return rt

    def _adopt(self, name: str, status: dict[str, Any]) -> None:
        """Take over the run and state another replica recorded in the status."""
        run = status.get("run")
        if run and run.get("id") and self.journal.import_run(
                {**run, "plan": name}, run.get("steps", [])):
            log.warning("adopted run %s of %s from its status", run["id"], name)
        theirs = status_mod.plan_state(status, name)
        mine = self.journal.plan_state(name)
        if theirs is not None and (mine is None or mine.updated_at < theirs.updated_at):
            self.journal.save_plan_state(theirs)

    def _requests(self, rt: PlanRuntime, obj: dict[str, Any]) -> None:
        notes = obj["metadata"].get("annotations") or {}
        name = rt.plan.name
        if A_REQUEST in notes:
            self._claim(name, notes, _REQUEST_KEYS)
            kind = notes[A_REQUEST]
            level = int(notes[A_LEVEL]) if notes.get(A_LEVEL, "").isdigit() else None
            try:
                rt.engine.request(kind, actor=notes.get(A_BY, "kubectl"),
                                  reason=notes.get(A_REASON, f"{A_REQUEST} annotation"),
                                  level=level if kind == "failover" else None)
            except ValueError as exc:
                self._event(obj, "Warning", "BadRequest", str(exc))
        if A_APPROVE in notes:
            self._claim(name, notes, (A_APPROVE, A_APPROVED_BY))
            run_id, _, step = notes[A_APPROVE].partition(":")
            try:
                rt.engine.approve(run_id, actor=notes.get(A_APPROVED_BY, "kubectl"), step=step)
            except PermissionError as exc:
                self._event(obj, "Warning", "ApprovalRefused", str(exc))
        if A_DONE in notes:
            self._claim(name, notes, (A_DONE, A_DONE_BY))
            run_id, _, step = notes[A_DONE].partition(":")
            try:
                rt.engine.done(run_id, step, actor=notes.get(A_DONE_BY, "kubectl"))
            except (KeyError, StopIteration, ValueError) as exc:
                self._event(obj, "Warning", "DoneRefused", f"{notes[A_DONE]}: {exc}")

    def _claim(self, name: str, seen: dict[str, str], keys: tuple[str, ...]) -> None:
        """Remove the annotations we are about to act on, only if they are still as seen:
        a concurrent change raises Conflict and nothing is acted on this cycle."""

        def mutate(obj: dict[str, Any]) -> None:
            notes = obj["metadata"].get("annotations") or {}
            if any(notes.get(k) != seen.get(k) for k in keys):
                raise k8s.Conflict(f"annotations of {KIND} {name} changed; claiming again")
            for k in keys:
                notes.pop(k, None)

        self.kube.update(GROUP, VERSION, self.namespace, PLURAL, name, mutate)

    def _deleting(self, name: str, obj: dict[str, Any]) -> None:
        rt = self._runtimes.get(name)
        if rt is not None and self.journal.active_run(name) is not None:
            # finish what was started: a half-switched world is worse than a late delete
            rt.engine.tick(rt.scheduler.drain())
            self._mirror(name)
            if self.journal.active_run(name) is not None:
                self._event(obj, "Warning", "DeletionDeferred",
                            "a run is active; the plan is removed when it finishes")
                return
        self._forget(name)
        if FINALIZER in obj["metadata"].get("finalizers", []):
            with contextlib.suppress(k8s.NotFound):  # already gone: nothing to release
                self._patch(name, _drop_finalizer)

    def _forget(self, name: str) -> None:
        rt = self._runtimes.pop(name, None)
        if rt is not None:
            self._probes.stop(rt.scheduler)

    def _stand_down(self) -> None:
        """No longer the leader: stop probing; the journal and status keep everything."""
        for name in list(self._runtimes):
            self._forget(name)

    # --- status and events ------------------------------------------------------------------

    def _mirror(self, plan: str) -> None:
        rt = self._runtimes.get(plan)
        if rt is None:
            return
        self._write_status(plan, rt.obj, generation=rt.generation, rt=rt)

    def _write_status(self, name: str, obj: dict[str, Any], *, generation: int | None,
                      problems: list[str] | None = None, rt: PlanRuntime | None = None) -> None:
        previous = rt.status if rt is not None else (obj.get("status") or {})
        new = status_mod.build(self.journal, name, generation=generation, previous=previous,
                               problems=problems, now=time.time())
        if not status_mod.changed(previous, new):
            return
        self.kube.update_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                lambda o: {**o, "status": new})
        if rt is not None:
            rt.status = new
        for kind, reason, message in status_mod.events(previous, new):
            self._event(obj, kind, reason, message)
        if problems:
            self._event(obj, "Warning", "InvalidPlan", "; ".join(problems))

    def _event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.kube.emit_event(obj, reason=reason, message=redact(message)[:1000], type=kind)
        except (k8s.KubeError, ConnectionError) as exc:  # an Event never blocks a step
            log.warning("event %s for %s not recorded: %s", reason,
                        obj["metadata"]["name"], exc)

    # --- helpers ----------------------------------------------------------------------------

    def _patch(self, name: str, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        obj = self.kube.update(GROUP, VERSION, self.namespace, PLURAL, name, mutate)
        with self._lock:
            if name in self._objects:
                self._objects[name] = obj
        return obj

    def _read_secret(self, ref: KubeSecretKey) -> bytes:
        return self.kube.read_secret(ref.namespace or self.namespace, ref.name, ref.key)


def _add_finalizer(obj: dict[str, Any]) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)


def _drop_finalizer(obj: dict[str, Any]) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers", [])
                                     if f != FINALIZER]


def _audit(journal: Journal, plan: str) -> Callable[..., None]:
    def audit(**kwargs: Any) -> None:
        journal.audit(plan=plan, **kwargs)

    return audit

"""A FailoverPlan's record in the API: its status, its Events, and every fenced write.

Owns what the operator writes about a plan (`StatusWriter`), and the runtime it keeps per
plan between reconciles (`PlanRuntime`). Why each rule:

- **Mirrored**: every committed journal change of a plan is mirrored into its status
  (`mirror`, the journal's listener), through the status subresource, conflict-retried,
  from the object as last read or written: no read before a write (`write`), and the
  object our write left is kept as the newest we know (`keep`). Each change of meaning
  becomes an Event (a decision's counters are not a change).
- **One write per cycle**: the changes of one engine cycle (a decision, the state, a
  readiness check) make one write at its end (the operator's `_cycle` sets `batching`),
  except that a new phase is written at once (every phase a plan passes through is in
  its status and Events) and a step about to start before it starts.
- **A failed write never changes the run's course**: the change is in the journal, the
  plan is marked dirty and its status written again with the next change or tick; only
  a step about to start waits until the status holds it (`LostLease` makes the engine
  stand by), so the record another replica would resume from never lacks a running step.
- **Held before a run**: the operator's finalizer is put on the plan before a status
  showing a run is written (`_hold`), so before any step starts; a plan that never runs
  never gets one (`controller/operator_deletion.py`).
- **Fenced**: every status carries the writer's `fencingToken` and `fencingHolder`; each
  write (each conflict retry too, after its re-read) is refused when the stored token is
  larger, so a deposed leader never overwrites its successor's status. Annotation claims
  and finalizer changes go through the same `fenced`. A stored token larger than ours
  while the Lease is still ours means the Lease was created again: ours is raised above
  it, once; a plan that left our shard is never outbid.
- **Adopted**: a replica that takes over reads the run and the plan's state (the
  policy's decision, trip and probe counts, without samples) from the status (`adopt`)
  and continues the run without repeating finished steps; its own probes refill the
  window.
- **Events said once**: an Event given a key (`once`) is created the first time and only
  counted after, its count brought up to date at most every `RECOUNT` seconds, so a
  deletion that waits an hour makes one Event, not one per cycle. An Event that cannot be
  recorded is logged, never raised: it never blocks a step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller import kube as k8s
from controller import status as status_mod
from controller.clock import Clock
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.elector import Elector
from controller.fencing import LostLease
from controller.journal import Journal
from controller.loop import Engine
from controller.model import StepStatus
from controller.operator_deletion import add_finalizer, held
from controller.operator_fence import PlanFences
from controller.operator_parts import Samples
from controller.plan import FailoverPlan
from controller.secrets import redact

log = logging.getLogger(__name__)

RECOUNT = 10.0  # seconds between updates of a repeated Event's count
T = TypeVar("T")


@dataclass
class PlanRuntime:
    """What the leader keeps per plan between reconciles."""

    plan: FailoverPlan
    uid: str | None  # the object this runtime is for: a plan created again is another
    generation: int | None
    engine: Engine
    scheduler: Samples
    status: dict[str, Any] = field(default_factory=dict)
    obj: dict[str, Any] = field(default_factory=dict)
    reconciled: float = 0.0  # time.monotonic() of the last reconcile
    active: bool = False  # a run was active after the last reconcile
    dirty: bool = False  # the last status write failed: written again on the next tick
    deleting: str | None = None  # being deleted: what the deletion waits for
    spec: dict[str, Any] = field(default_factory=dict)  # the spec `plan` was parsed from
    held: str | None = None  # why a newer generation is not applied yet
    held_for: int | None = None  # that generation
    # until when (the engine's clock) a cycle without samples changes nothing (`Store.
    # quiet_until`): a due reconcile before then, with no news, is skipped (`_quiet`)
    quiet_until: float | None = None
    batching: bool = False  # in a cycle whose changes are written once, at its end (`_cycle`)



@dataclass
class _Said:
    """An Event created once and counted after (`StatusWriter.event(once=...)`)."""

    event: dict[str, Any]
    count: int
    counted: float  # the writer's clock.monotonic() at the last count written


class StatusWriter:
    """Writes plans' statuses, Events, claims and finalizers, fenced by the leader's
    token. `runtimes` is the operator's own map of plan runtimes (shared, not copied);
    the times written and the Events' recount follow `clock`; `keep(name, obj)` holds
    the object a write left as the newest we know of it."""

    def __init__(self, kube: k8s.KubeAPI, namespace: str, journal: Journal, *,
                 elector: Callable[[], Elector], identity: str, fences: PlanFences,
                 clock: Clock, runtimes: dict[str, PlanRuntime],
                 keep: Callable[[str, dict[str, Any]], None]) -> None:
        self.kube, self.namespace, self.journal = kube, namespace, journal
        self.identity, self.fences, self.clock = identity, fences, clock
        self._elector, self._runtimes, self._keep = elector, runtimes, keep
        self._said: dict[str, dict[Any, _Said]] = {}  # plan name -> Events said once

    @property
    def elector(self) -> Elector:
        """The operator's elector, as it is now (the safety simulation gives its own)."""
        return self._elector()

    def mirror(self, plan: str, *, listener: bool = True) -> None:
        """The journal's listener: write the plan's status after each committed change
        (inside `_cycle`, only a new phase or a step about to start; the rest when the
        cycle ends).

        The change is in the journal before this runs, and a status write that fails (an
        API error, a newer leader's token) never changes the run's course: the plan is
        marked dirty and its status written again with the next change (each write is
        the whole record) or on the next tick. Nothing is raised into the engine — a
        failed step is still handled, a finished run still completed — with one
        exception, which only pauses the run: a step (or a further attempt) about to
        start, recorded running in the journal but not yet in the status, does not
        start while the status another replica would resume from lacks it; LostLease
        makes the engine stand by, and the next cycle resumes the step once its record
        is written. A deposed leader is stopped by its fence."""
        rt = self._runtimes.get(plan)
        if rt is None:
            return
        if listener and rt.batching and not self._starting(plan, rt) and \
                not self._phase_moved(plan, rt):
            return  # written with the cycle's other changes when it ends (`_cycle`)
        try:
            self._hold(plan, rt)
            self.write(plan, rt.obj, generation=rt.obj["metadata"].get("generation"), rt=rt)
        except Exception as exc:  # the journal has it; written again on the next tick
            if not rt.dirty:
                log.warning("status of %s %s not written (%s); the journal holds the "
                            "change, written again on the next tick", KIND, plan,
                            redact(str(exc)))
            rt.dirty = True
            if listener and self._starting(plan, rt):
                raise LostLease(f"the status of {KIND} {plan}, or the finalizer that holds "
                                "it while its run goes on, could not be written, so the "
                                "record another replica would resume from lacks the step "
                                "about to start; it starts once both are written") from None
            return
        if rt.dirty:
            log.info("status of %s %s written again", KIND, plan)
        rt.dirty = False

    def _hold(self, plan: str, rt: PlanRuntime) -> None:
        """Put our finalizer on the plan before a status showing a run is written: each
        step starts only once its record is written (`mirror`), so no step changes the
        world of a plan that could be deleted without waiting for its run. A plan that
        never runs never gets one: its first status is its one write."""
        if held(rt.obj) or self.journal.active_run(plan) is None:
            return
        self.elector.fence()
        rt.obj = self.patch(plan, add_finalizer, current=rt.obj)

    def _phase_moved(self, plan: str, rt: PlanRuntime) -> bool:
        """The journal's phase is not the one the status last written shows (a plan with
        no status yet has none to move from): written at once, so every phase a plan
        passes through is in its status and Events (Healthy, Tripped, FailingOver ...)."""
        st, written = self.journal.plan_state(plan), rt.status.get("phase")
        return st is not None and written is not None and st.phase.value != written

    def _starting(self, plan: str, rt: PlanRuntime) -> bool:
        """A step (or a further attempt of it) is about to start: recorded running in the
        journal, while the status last written has it not running or with fewer attempts
        (its work has not begun: the executor records the start, then starts it)."""
        run = self.journal.active_run(plan)
        if run is None:
            return False
        written = rt.status.get("run") or {}
        seen = ({s["name"]: (s.get("status"), s.get("attempts", 0))
                 for s in written.get("steps", [])} if written.get("id") == run.id else {})
        return any(s.status is StepStatus.RUNNING and (
            seen.get(s.name, ("pending", 0))[0] != StepStatus.RUNNING.value
            or s.attempts > seen.get(s.name, ("pending", 0))[1])
            for s in self.journal.steps(run.id))

    def write(self, name: str, obj: dict[str, Any], *, generation: int | None,
              problems: list[str] | None = None, rt: PlanRuntime | None = None) -> None:
        """Write the status the journal gives, fenced: refused (LostLease) when we no longer
        lead or the stored status carries a newer leader's token — on every conflict
        retry too, so a deposed leader never overwrites its successor's status."""
        previous = rt.status if rt is not None else (obj.get("status") or {})
        new = status_mod.build(self.journal, name, generation=generation, previous=previous,
                               problems=problems, now=self.clock.now(),
                               deleting=rt.deleting if rt is not None else None,
                               applied=(rt.generation, rt.spec) if rt is not None else None,
                               held=rt.held if rt is not None else None,
                               watched=rt.plan if rt is not None else None,
                               token=self.elector.token(), holder=self.identity)
        if not status_mod.changed(previous, new):
            return
        # the object as we last read or wrote it: no read before the write (a stale copy
        # is refused by its resourceVersion, and the retry reads afresh and checks again)
        current = rt.obj if rt is not None else obj

        def write(fencing: k8s.Fencing) -> dict[str, Any]:
            new.update(fencing.stamp())

            def mutate(o: dict[str, Any]) -> dict[str, Any]:
                if not self.elector.leading():
                    raise LostLease(f"{self.identity} no longer leads "
                                    f"{self.elector.config.lease_name}; status not written")
                return {**o, "status": new}

            return self.kube.update_status(GROUP, VERSION, self.namespace, PLURAL, name,
                                           mutate, fencing=fencing, current=current)

        written = self._wrote(name, self.fenced(name, write))
        if rt is not None:
            if written.get("status") == new:  # as the server keeps it: held once, not twice,
                new = written["status"]  # the decoded copy: its field names shared (kube_http)
            rt.status, rt.obj = new, written
        for kind, reason, message in status_mod.events(previous, new):
            self.event(obj, kind, reason, message)
        if problems and problems != (previous.get("problems") or []):
            self.event(obj, "Warning", "InvalidPlan", "; ".join(problems))

    def event(self, obj: dict[str, Any], kind: str, reason: str, message: str, *,
              once: tuple[Any, ...] | None = None) -> None:
        """Record an Event about `obj`. With `once` (a key), the same Event is created
        the first time and only counted after (its `count` and `lastTimestamp` brought
        up to date at most every `RECOUNT` seconds), not created again every cycle."""
        name = obj["metadata"]["name"]
        said = self._said.setdefault(name, {}).get(once) if once is not None else None
        try:
            if said is not None:
                said.count += 1
                if self.clock.monotonic() - said.counted >= RECOUNT:
                    said.counted = self.clock.monotonic()
                    self.kube.count_event(said.event, said.count)
                return
            event = self.kube.emit_event(obj, reason=reason, message=redact(message)[:1000],
                                         type=kind)
            if once is not None:
                self._said[name][once] = _Said(event, 1, self.clock.monotonic())
        except (k8s.KubeError, ConnectionError) as exc:  # an Event never blocks a step
            log.warning("event %s for %s not recorded: %s", reason, name, exc)

    def adopt(self, name: str, status: dict[str, Any]) -> None:
        """Take over the run and state another replica recorded in the status (the policy's
        without its samples: `status.plan_state`)."""
        run = status.get("run")
        if run and run.get("id") and self.journal.import_run(
                {**run, "plan": name}, run.get("steps", [])):
            log.warning("adopted run %s of %s from its status", run["id"], name)
        theirs = status_mod.plan_state(status, name)
        mine = self.journal.plan_state(name)
        if theirs is not None and (mine is None or mine.updated_at < theirs.updated_at):
            self.journal.save_plan_state(theirs)
        self.fences.adopted(status)  # written by another shard's leader: outrank it

    def forget(self, name: str) -> None:
        """The plan is gone: its Events said once go with it."""
        self._said.pop(name, None)

    def fenced(self, name: str, write: Callable[[k8s.Fencing], T]) -> T:
        """`write` to plan `name` with our fencing token; LostLease when a newer leader's
        token is stored.

        A stored token larger than ours while the Lease, read now, is still ours and the
        plan still in our shard means the Lease was deleted and created again (its count
        restarted): our token is raised above the stored one and the write tried once
        more. A plan that left our shard is its new leader's: never outbid it."""
        try:
            return write(k8s.Fencing(self.elector.token(), self.identity))
        except k8s.StaleFencingToken as exc:
            stale = exc
        self.fences.still_ours(name)
        token = self.elector.advance(stale.stored + 1)  # LostLease unless the Lease is ours
        try:
            return write(k8s.Fencing(token, self.identity))
        except k8s.StaleFencingToken as exc:
            raise LostLease(str(exc)) from None

    def patch(self, name: str, mutate: Callable[[dict[str, Any]], None],
              current: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._wrote(name, self.fenced(name, lambda fencing: self.kube.update(
            GROUP, VERSION, self.namespace, PLURAL, name, mutate, fencing=fencing,
            current=current)))

    def _wrote(self, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Keep the object as our write left it, the newest we know, so the next write
        starts from it without reading it first."""
        self._keep(name, obj)
        return obj

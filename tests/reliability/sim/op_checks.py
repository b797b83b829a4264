"""The invariants of the operator simulation (`operators`), checked after every event.

Replicas keep their own journals; what they share is the API server (`FakeCluster`):
the Lease, the plan object and its status. So the checks read the world's writes (each
with its fencing token, holder and "RUN/STEP" label, and the step's record in the
writer's own journal as the write landed), every change of the plan object in the
cluster's log (each status written, the object's creation and removal, and who made it),
and, when it matters, a replica's journal file.

1. **One writer.** Every world write is made under a step's fence; a token belongs to one
   holder; tokens never go back; no write carries a token older than the Lease's
   `leaseTransitions` as the write landed (a deposed leader).
2. **Terminal is terminal.** No world write under a step the writer's journal recorded
   succeeded/failed/skipped/reverted; a restore is never performed twice.
3. **The finalizer holds.** When the object goes (its last finalizer removed), every run
   of it that changed the world is finished in a replica's journal (the remover's when
   it has it), with no step that wrote still running or unknown, and the run its last
   status shows unfinished is finished in the journal of the replica that removed the
   finalizer. No world write happens while no object exists.
4. **One object, one record.** A run belongs to the object (uid) it first appeared
   under: a recreated plan's status never shows a run of the deleted one, no run of the
   deleted one writes to the world, and no step runs that the object's spec lacks.
5. **A failed status write never changes a run's course.** A failover run that ended
   `FailedOver` (in any status written, and in the settled leader's journal) has every
   step succeeded or skipped, but for a failed step that may fail (`onFailure:
   continue`, a notice): a failed `onFailure: abort` step ends it `Failed`.
6. **The status mirrors the journal once writes succeed.** After the faults heal, every
   reconcile the leader completes leaves the status's phase, active site and run (id,
   phase, finished, each step's status) as its journal's; at the end a replica leads and
   has done so at least once, and a plan its record says failed over (the world unchanged
   since) has the traffic on the backup site.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import TYPE_CHECKING, Any, NoReturn

from controller import model
from controller import status as status_mod
from controller.journal import Journal
from controller.model import Phase, StepStatus
from controller.operator import LeaderConfig
from tests.reliability.sim.harness import Violation

if TYPE_CHECKING:
    from tests.reliability.sim.operators import OperatorSim, OpReplica
    from tests.reliability.sim.world import WorldWrite

TERMINAL = {s.value for s in model.TERMINAL}
OPEN = {StepStatus.RUNNING.value, StepStatus.UNKNOWN.value, StepStatus.PENDING.value, None}
DONE_WELL = {StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value}


class OpChecker:
    def __init__(self, sim: OperatorSim):
        from tests.reliability.sim.operators import KEY, NAME, NAMESPACE

        self.sim, self.key, self.name = sim, KEY, NAME
        self.lease_key = ("coordination.k8s.io", "leases", NAMESPACE,
                          LeaderConfig().lease_name)
        self.checked: Counter[str] = Counter()
        self.token_holder: dict[int, str | None] = {}
        self.max_token: int | None = None
        self.run_uid: dict[str, str] = {}  # run id -> the object (uid) it belongs to
        self.written: dict[str, set[str]] = {}  # run id -> steps that changed the world
        self.restores: Counter[str] = Counter()
        self.seen = 0  # how much of the cluster's log was checked
        self.uid: str | None = None
        self.steps: dict[str, str] = {}  # the object's spec: step name -> action
        self.status: dict[str, Any] = {}
        # id(WorldWrite) -> the step's record in the writer's journal and the Lease's
        # (holder, token) as the write landed
        self.landing: dict[int, tuple[str | None, tuple[str | None, int | None]]] = {}
        self._dbs: dict[str, sqlite3.Connection] = {}
        # phase, run kind, run id last mirrored, and the world writes made by then
        self.settled: tuple[Any, ...] | None = None

    @property
    def n_runs(self) -> int:
        return len(self.run_uid)

    def fail(self, kind: str, detail: str) -> NoReturn:
        raise Violation(kind, detail)

    def authority(self) -> tuple[str | None, int | None]:
        """The Lease's holder and token (`leaseTransitions`) now."""
        lease = self.sim.cluster.objects.get(self.lease_key)
        if lease is None:
            return None, None
        spec = lease["spec"]
        return spec.get("holderIdentity"), int(spec.get("leaseTransitions") or 0)

    def start(self) -> None:
        return None

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def _db(self, path: str) -> sqlite3.Connection:
        db = self._dbs.get(path)
        if db is None:
            db = self._dbs[path] = sqlite3.connect(path, isolation_level=None,
                                                   check_same_thread=False)
        return db

    def step_record(self, group: str, label: str | None) -> str | None:
        """The writer's own journal's record of the step `label` ("RUN/STEP") names."""
        path = self.sim.paths.get(group)
        if path is None or label is None:
            return None
        run, _, step = label.partition("/")
        row = self._db(path).execute("SELECT status FROM steps WHERE run_id=? AND name=?",
                                     (run, step.split("/")[0])).fetchone()
        return row[0] if row else None

    # --- after each event --------------------------------------------------------------------

    def after_event(self, actor: Any) -> None:
        sim = self.sim
        if sim.writes:
            writes, sim.writes = sim.writes, []
            for w in writes:
                self._write(w)
        log = sim.cluster.log
        if len(log) > self.seen:
            for _, kind, key, obj, by in log[self.seen:]:
                if key == self.key:
                    self._change(kind, obj, by)
            self.seen = len(log)

    def after_time(self) -> None:
        self.after_event(None)

    # --- 1, 2, 4: the world's writes ---------------------------------------------------------

    def _write(self, w: WorldWrite) -> None:
        what = (f"{w.actor} changed {w.backend} ({w.method}) {w.before} -> {w.after} "
                f"with token {w.token}, holder {w.holder}, label {w.label}")
        token, label = w.token, w.label
        if token is None or label is None:
            self.fail("unfenced write", f"{what}: a change outside any step's fence")
        first = self.token_holder.setdefault(token, w.holder)
        if first != w.holder:
            self.fail("one token, two holders", f"{what}; token {token} was first used by "
                      f"{first}")
        if self.max_token is not None and token < self.max_token:
            self.fail("token went backwards", f"{what}; token {self.max_token} wrote before")
        self.max_token = token if self.max_token is None else max(self.max_token, token)
        recorded, (holder, current) = self.landing.pop(id(w), (None, self.authority()))
        if current is not None and token < current:
            self.fail("write from a deposed leader", f"{what}; the Lease had passed to "
                      f"{holder} with token {current}")
        parts = label.split("/")
        run, step, revert = parts[0], parts[1] if len(parts) > 1 else "", parts[2:] == [
            "revert"]
        if self.uid is None:
            self.fail("world changed with no plan", f"{what}: FailoverPlan {self.name} no "
                      "longer exists (its finalizer was removed)")
        owner = self.run_uid.setdefault(run, self.uid)
        if owner != self.uid:
            self.fail("a run of a deleted plan changed the world",
                      f"{what}: run {run} belongs to the deleted object (uid {owner}); the "
                      f"plan is now uid {self.uid}")
        base = _reverted(step, self.steps)
        if base not in self.steps:
            self.fail("a step the plan does not have", f"{what}: the spec of uid "
                      f"{self.uid} has steps {sorted(self.steps)}")
        if revert:
            return
        self.written.setdefault(run, set()).add(step)
        if recorded in TERMINAL:
            self.fail("world changed after the step was recorded terminal",
                      f"{what}; {w.group}'s journal recorded {step} {recorded}")
        if self.steps[base] == "restore":
            self.restores[label] += 1
            if self.restores[label] > 1:
                self.fail("a restore performed twice", f"{what}; restores under {label}: "
                          f"{self.restores[label]}")

    # --- 3, 4, 5: the plan object's changes -----------------------------------------------

    def _change(self, kind: str, obj: dict[str, Any], by: str) -> None:
        uid = obj["metadata"]["uid"]
        if kind == "ADDED":
            self.uid, self.status = uid, {}
            self.steps = {s["name"]: s["action"] for s in obj["spec"]["steps"]}
            return
        if kind == "DELETED":
            self._released(uid, by)
            self.uid, self.steps = None, {}
            return
        status = obj.get("status") or {}
        if status != self.status:
            self.status = status
            self._status(uid, status)

    def _status(self, uid: str, status: dict[str, Any]) -> None:
        run = status.get("run") or {}
        rid = run.get("id")
        if not rid:
            return
        self.checked["status"] += 1
        owner = self.run_uid.setdefault(rid, uid)
        if owner != uid:
            self.fail("a recreated plan inherited a run", f"the status of {self.name} (uid "
                      f"{uid}) shows run {rid} of the deleted object (uid {owner})")
        self._course(run, run.get("steps", []), "its status")

    def _course(self, run: dict[str, Any], steps: list[dict[str, Any]], where: str) -> None:
        if run.get("kind") != "failover" or run.get("finishedAt") is None \
                or run.get("phase") != Phase.FAILED_OVER.value:
            return
        may_fail = {d.get("name") for d in run.get("definition") or []
                    if d.get("onFailure") == "continue" or d.get("action") == "notify"}
        bad = [(s["name"], s["status"]) for s in steps if s["status"] not in DONE_WELL
               and not (s["status"] == StepStatus.FAILED.value and s["name"] in may_fail)]
        if bad:
            self.fail("a run with a failed step ended FailedOver",
                      f"run {run.get('id')} ended FailedOver in {where} with steps {bad} "
                      f"(outcome: {run.get('outcome')!r})")

    def _released(self, uid: str, by: str) -> None:
        """The object `uid` is gone: its finalizer was removed by `by` (a replica). Every
        run of it that changed the world is finished in some replica's journal with no
        step that wrote left open; the run its last status showed unfinished is finished
        in the remover's own journal (it adopted it, and finished it)."""
        self.checked["released"] += 1
        last = self.status.get("run") or {}
        for rid in [r for r, u in self.run_uid.items() if u == uid]:
            wrote = self.written.get(rid, set())
            if wrote:  # the remover's record first: it let the plan go on what it holds
                mine = self.sim.paths.get(by)
                paths = sorted(self.sim.paths.values(), key=lambda path: path != mine)
                records = [self._record(path, rid) for path in paths]
                done = [steps for finished, steps in records if finished is not None]
                if not done:
                    self.fail("finalizer dropped while a run is active",
                              f"{by} removed the finalizer of {self.name} (uid {uid}): run "
                              f"{rid} changed the world ({', '.join(sorted(wrote))}) and no "
                              "journal has it finished")
                still = sorted(s for s in wrote if done[0].get(s) in OPEN)
                if still:
                    self.fail("finalizer dropped while a step may have changed the world",
                              f"{by} removed the finalizer of {self.name} (uid {uid}): steps "
                              f"{still} of run {rid} wrote and are not recorded terminal")
            if rid == last.get("id") and last.get("finishedAt") is None:
                path = self.sim.paths.get(by)
                if path is None or self._record(path, rid)[0] is None:
                    self.fail("finalizer dropped while a run is active",
                              f"{by} removed the finalizer of {self.name} (uid {uid}) while "
                              f"its status shows run {rid} {last.get('phase')}, which {by}'s "
                              "journal does not have finished")

    def _record(self, path: str, rid: str) -> tuple[float | None, dict[str, str]]:
        db = self._db(path)
        row = db.execute("SELECT finished_at FROM runs WHERE id=?", (rid,)).fetchone()
        steps = dict(db.execute("SELECT name, status FROM steps WHERE run_id=?", (rid,)))
        return (row[0] if row else None), steps

    # --- 5, 6: at the end --------------------------------------------------------------------

    def mirrored(self, proc: OpReplica) -> None:
        """After the faults healed, each reconcile the leader completes leaves the status
        saying what its journal says."""
        obj = self.sim.cluster.objects.get(self.key)
        rt = proc.op._runtimes.get(self.name) if proc.op is not None else None
        if obj is None or rt is None or rt.uid != obj["metadata"]["uid"] or rt.dirty:
            return  # gone, invalid, created again meanwhile, or not leading as it wrote
        self.checked["mirrored"] += 1
        journal = Journal(proc.path)
        try:
            truth = status_mod.build(journal, self.name, generation=None, previous={},
                                     now=self.sim.sched.now())
        finally:
            journal.close()
        got, want = _shown(obj.get("status") or {}), _shown(truth)
        if got != want:
            self.fail("status does not mirror the journal",
                      f"after the faults healed, {proc.group} reconciled {self.name}, yet its "
                      f"status shows {got} while {proc.group}'s journal says {want}")
        run = truth.get("run") or {}
        self._course(run, run.get("steps", []), f"{proc.group}'s journal")
        self.settled = (truth.get("phase"), run.get("kind"), run.get("id"),
                        self.sim.n_writes)

    def at_end(self) -> None:
        """The faults healed long enough ago: a replica leads, has reconciled the plan
        (so its status mirrors its journal), and a plan its record says is failed over
        has the traffic on the backup site."""
        sim = self.sim
        if self.key not in sim.cluster.objects:
            return
        holder, _ = self.authority()
        if not any(p.holder == holder and p.op is not None and p.op.elector.leading()
                   for p in sim.operators()):
            self.fail("no leader after the faults healed",
                      f"{sim.schedule.horizon - sim.schedule.active:.0f} s after the faults "
                      f"healed, no replica leads (the Lease: {holder})")
        if self.settled is None:
            self.fail("status not written again after the faults healed",
                      f"{sim.schedule.horizon - sim.schedule.active:.0f} s after the faults "
                      "healed, no leader has completed a reconcile of the plan")
        phase, kind, run, writes = self.settled
        if kind == "failover" and phase == Phase.FAILED_OVER.value \
                and writes == sim.n_writes and sim.serving_site() != "dc-b":
            self.fail("the record and the world disagree",
                      f"the plan says FailedOver (run {run}), but the traffic is on "
                      f"{sim.serving_site()}")


def _reverted(step: str, steps: dict[str, str]) -> str:
    """The step of the spec a failback's step reverts (`revert-NAME`, or `revert-NAME-N`
    for an incident's earlier failover run) or brings home (`failback-NAME`: the database
    failback of the promote step NAME); `step` itself for any other step."""
    if step.startswith("failback-") and step.removeprefix("failback-") in steps:
        return step.removeprefix("failback-")
    if not step.startswith("revert-"):
        return step
    name = step.removeprefix("revert-")
    head, _, n = name.rpartition("-")
    return head if name not in steps and n.isdigit() and head in steps else name


def _shown(status: dict[str, Any]) -> tuple[Any, ...]:
    """What the status says about the record: phase, active site, the run."""
    run = status.get("run") or {}
    return (status.get("phase"), status.get("activeSite"), run.get("id"), run.get("phase"),
            run.get("finishedAt") is not None,
            tuple((s["name"], s["status"]) for s in run.get("steps", [])))

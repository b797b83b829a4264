"""The invariants of the operator simulation (`operators`), checked after every event.

Replicas keep their own journals; what they share is the API server (`FakeCluster`):
the Leases (one per shard), the plan objects and their status. So the checks read the
world's writes (each with its plan, fencing token, holder and "RUN/STEP" label, and the
step's record in the writer's own journal as the write landed), every change of a plan
object and of a Lease in the cluster's log (each status written, the object's creation
and removal, and who made it), and, when it matters, a replica's journal file. Each plan
is checked on its own (`PlanTrack`): a sharded schedule has two, each with its own world.

1. **One writer.** Every world write is made under a step's fence; a token belongs to one
   holder of its shard's Lease; a plan's tokens never go back; no write carries a token
   older than the writer's Lease's `leaseTransitions` as the write landed (a deposed
   leader) — but for its own holder's, older only by the holder's own raises since it
   took the Lease (for another plan: 1b').
1a. **One actor per plan, the leader of its shard.** Acting on a plan — a world write of
   its run, a status write, a finalizer or annotation change — is done under one
   leadership (a shard and its Lease's token) at a time: a new one takes over only while
   it holds its Lease and the plan is in its shard (by its labels as the API server has
   them), and an actor that was taken over from never acts on the plan again. The old
   shard's leader may go on acting on a plan just moved away until it learns of the move,
   as long as the new shard's leader has not acted on it yet. With an unsharded group
   beside the shards (`rival`), no replica of it leads while a shard's replica does.
1b. **A shard moves alone.** A Lease passes from one holder to another only when the
   holder failed (crashed, stopped, paused, cut from the API server) within the Lease's
   duration: killing one shard's leader never moves another shard.
1b'. **A Lease's token rises only to outbid, once per arrival.** A Lease's
   `leaseTransitions` changes while its holder stays only when its leader raises its
   fencing token to one above a token a plan's status carries (written under another
   Lease: a plan moved in from another shard, or left by a deployment that stopped or
   still runs beside), and no more often, by one process, than plans arrived in its
   shard (created in it, or moved in): two leaders never outbid each other back and
   forth, and a renewal never sets a raised token back (which would make the leader
   raise it again). **A raise is not given up while the Lease is ours**: a leader that
   works (leading, reaching the API server, not stopping) and whose Lease still names
   it with its token never drops a raise (and with it the plan it was for) because its
   own renewal wrote the Lease between the raise's read and write.
1c. **Every plan is attended.** While its shard has a leader that works (alive, leading,
   reaching the API server, not paused), that leader starts a reconcile of the plan (or is
   in one) at least every `ATTENDED` seconds.
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
from controller.elector import LeaderConfig
from controller.journal import Journal
from controller.model import Phase, StepStatus
from controller.operator import QUIET_TICKS
from controller.sharding import lease_name
from controller.testing_kube import LEASES
from tests.reliability.sim.harness import Violation

if TYPE_CHECKING:
    from tests.reliability.sim.operators import OperatorSim, OpReplica, SimPlan
    from tests.reliability.sim.world import WorldWrite

TERMINAL = {s.value for s in model.TERMINAL}
OPEN = {StepStatus.RUNNING.value, StepStatus.UNKNOWN.value, StepStatus.PENDING.value, None}
DONE_WELL = {StepStatus.SUCCEEDED.value, StepStatus.SKIPPED.value}
ATTENDED = QUIET_TICKS + 3.0  # seconds (ticks of 1 s): a quiet plan's every 5 ticks, and
# the tick, the queue and the watch on the way
Term = tuple[int, int]  # a leadership: (shard, its Lease's token)


class PlanTrack:
    """What the checker knows of one plan: the object as the API server has it, and who
    has acted on it."""

    def __init__(self, sp: SimPlan):
        self.sp, self.name, self.key = sp, sp.name, sp.obj_key
        self.uid: str | None = None
        self.labels: dict[str, str] = {}
        self.steps: dict[str, str] = {}  # the object's spec: step name -> action
        self.status: dict[str, Any] = {}
        self.changed = 0.0  # when the object last changed
        self.max_token: int | None = None
        self.last: Term | None = None  # the leadership that acted on it last
        self.visited: set[int] = set()  # the shards it has been in since
        self.top: dict[int, int] = {}  # shard -> the newest token of it that acted
        # the shard's working leader that should attend to it (uid, shard, process
        # group), and since when
        self.watch: tuple[str, int, str] | None = None
        self.since = 0.0
        # phase, run kind, run id last mirrored, and the world writes made by then
        self.settled: tuple[Any, ...] | None = None


class OpChecker:
    def __init__(self, sim: OperatorSim):
        from tests.reliability.sim.operators import NAMESPACE

        self.sim = sim
        self.plans = {sp.obj_key: PlanTrack(sp) for sp in sim.plans}
        self.named = {tr.name: tr for tr in self.plans.values()}
        base = LeaderConfig().lease_name
        self.lease_keys = [(*LEASES, NAMESPACE, lease_name(base, shard))
                           for shard in sim.shards]
        self.lease_shard = {key: k for k, key in enumerate(self.lease_keys)}
        # the unsharded group beside the shards (`OpSchedule.rival`): it claims every plan
        self.rival = len(sim.shards) - 1 if sim.schedule.rival else None
        self.holders: dict[int, str | None] = {}  # shard -> its Lease's holder, last seen
        self.tokens: dict[int, int] = {}  # shard -> its Lease's token, last seen
        self.term: dict[int, int] = {}  # shard -> its token when its holder took it
        self.arrivals: Counter[int] = Counter()  # shard -> plans created in it or moved in
        self.raises: Counter[tuple[int, str]] = Counter()  # (shard, process) -> its
        # Lease's token raised by that process, holding it
        self.stored: set[int] = set()  # every fencing token a plan's status has carried
        self.impaired: dict[str, float] = {}  # holder -> the last time it failed
        self.busy: set[tuple[str, str]] = set()  # (process group, plan) in a reconcile
        self.started: dict[tuple[str, str], float] = {}  # ... when the last one started
        self.checked: Counter[str] = Counter()
        self.token_holder: dict[Term, str | None] = {}
        self.run_uid: dict[str, str] = {}  # run id -> the object (uid) it belongs to
        self.written: dict[str, set[str]] = {}  # run id -> steps that changed the world
        self.restores: Counter[str] = Counter()
        self.seen = 0  # how much of the cluster's log was checked
        self.dropped: list[str] = []  # raises given up on a Lease still ours (1b')
        # id(WorldWrite) -> its plan, the step's record in the writer's journal and the
        # writer's Lease's (holder, token) as the write landed
        self.landing: dict[int, tuple[str, str | None, tuple[str | None, int | None]]] = {}
        self._dbs: dict[str, sqlite3.Connection] = {}

    @property
    def n_runs(self) -> int:
        return len(self.run_uid)

    def fail(self, kind: str, detail: str) -> NoReturn:
        raise Violation(kind, detail)

    def authority(self, shard: int = 0) -> tuple[str | None, int | None]:
        """The shard's Lease's holder and token (`leaseTransitions`) now."""
        lease = self.sim.cluster.objects.get(self.lease_keys[shard])
        if lease is None:
            return None, None
        spec = lease["spec"]
        return spec.get("holderIdentity"), int(spec.get("leaseTransitions") or 0)

    def shard(self, tr: PlanTrack) -> int | None:
        """The shard the plan is in, by its labels as last seen."""
        from tests.reliability.sim.operators import shard_of

        return shard_of(self.sim.shards, tr.name, tr.labels)

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
        if self.dropped:
            self.fail("a raise of the token given up on a Lease still ours", self.dropped[0])
        if sim.writes:
            writes, sim.writes = sim.writes, []
            for w in writes:
                self._write(w)
        log = sim.cluster.log
        if len(log) > self.seen:
            for _, kind, key, obj, by in log[self.seen:]:
                tr = self.plans.get(key)
                if tr is not None:
                    self._change(tr, kind, obj, by)
                elif key in self.lease_shard:
                    self._lease(self.lease_shard[key], obj, by)
            self.seen = len(log)
        if self.rival is not None:
            self._one_deployment()

    def after_time(self) -> None:
        self.after_event(None)
        for tr in self.plans.values():
            self._attended(tr)

    # --- 1a: one actor per plan, the leader of its shard --------------------------------

    def _acts(self, tr: PlanTrack, term: Term, holder: str | None,
              lease: tuple[str | None, int | None], what: str) -> None:
        """The leadership `term` acts on the plan; `lease` is its Lease as it acted.

        It takes the plan over from the last one that acted (`tr.last`) only when the
        plan has been in its shard since that one last acted, and it leads that shard
        now; a shard's older leadership never acts after a newer one did."""
        shard, token = term
        now = self.shard(tr)
        newest = tr.top.get(shard, token)
        if newest > token:
            self.fail("two actors on one plan", f"{what}: shard {shard}'s leadership with "
                      f"token {token} acted on {tr.name} after the one with token {newest}")
        tr.top[shard] = token
        if term != tr.last:
            if shard not in tr.visited:
                since = ("it was created" if tr.last is None else
                         f"shard {tr.last[0]}'s leadership with token {tr.last[1]} last "
                         "acted on it")
                self.fail("two actors on one plan",
                          f"{what}: {tr.name} (labels {tr.labels}, now in shard {now}) has "
                          f"not been in shard {shard} since {since} (only in shards "
                          f"{sorted(tr.visited)})")
            if lease != (holder, token):
                self.fail("a plan taken over by a replica that does not lead",
                          f"{what}: the Lease of shard {shard} is {lease} (holder, token)")
            if tr.last is not None:
                self.checked["takeovers"] += 1
                if tr.last[0] != shard:
                    self.checked["moved"] += 1  # the plan changed shards, and leader
            tr.last = term
        tr.visited = ({now} if now is not None else set()) | (
            {self.rival} if self.rival is not None else set())

    def reconciling(self, proc: OpReplica, plan: str, busy: bool) -> None:
        """`proc` starts (or ends) a reconcile of `plan`."""
        key = (proc.group, plan)
        if busy:
            self.busy.add(key)
            self.started[key] = self.sim.sched.t
        else:
            self.busy.discard(key)

    def _attended(self, tr: PlanTrack) -> None:
        """1c: the working leader of the plan's shard reconciles it every `ATTENDED` s."""
        now = self.sim.sched.t
        shard = self.shard(tr) if tr.uid is not None else None
        leader = self._leader(shard) if shard is not None else None
        watch = None if leader is None or tr.uid is None else (tr.uid, shard, leader.group)
        if watch != tr.watch:
            tr.watch, tr.since = watch, now
            return
        if leader is None:
            return
        key = (leader.group, tr.name)
        last = now if key in self.busy else max(tr.since, self.started.get(key, tr.since))
        if now - last > ATTENDED:
            self.fail("plan left unreconciled",
                      f"{tr.name} is in shard {shard}, led by {leader.group} "
                      f"({leader.holder}) since t={tr.since:.2f}, which has not reconciled "
                      f"it since t={last:.2f} ({now - last:.1f} s > {ATTENDED:g} s)")
        self.checked["attended"] += 1

    def _leader(self, shard: int, *, working: bool = True) -> OpReplica | None:
        """The shard's working leader: alive, not stopping or paused, reaching the API
        server (unless not `working`), holding the Lease and knowing it; in a `rival`
        schedule, else the unsharded group's (one of the two deployments yields)."""
        for k in (shard, self.rival) if self.rival is not None else (shard,):
            holder, _ = self.authority(k)
            for p in self.sim.operators():
                if p.shard == k and p.holder == holder and (not working or self._working(p)) \
                        and p.op is not None and p.op.elector.leading():
                    return p
        return None

    def _one_deployment(self) -> None:
        """1a, `rival` schedules: the unsharded group and the shards' groups never lead at
        once (the one that took its Lease later sees the other's and yields)."""
        leading = {p.shard: p.group for p in self.sim.operators()
                   if p.alive and p.op is not None and p.op.elector.leading()}
        if self.rival in leading and len(leading) > 1:
            self.fail("two deployments act on one plan",
                      f"{leading[self.rival]} leads the unsharded group while "
                      f"{', '.join(g for k, g in leading.items() if k != self.rival)} "
                      "leads a shard: both select every plan of the shard")
        self.checked["one deployment"] += 1

    def _working(self, p: OpReplica) -> bool:
        """Alive, not stopping or paused, reaching the API server."""
        now = self.sim.sched.t
        return p.alive and not p.stopping and p.kube is not None and not p.kube.cut \
            and not any(a.frozen_until > now for a in self.sim.sched.actors
                        if a.group == p.group)

    # --- 1b: a shard moves alone --------------------------------------------------------

    def impair(self, proc: OpReplica, until: float | None = None) -> None:
        """`proc` fails (dies, stops, is paused until `until`, cut from or reconnected
        to the API server): its Lease may pass to another replica of its shard."""
        at = self.sim.sched.t if until is None else until
        self.impaired[proc.holder] = max(self.impaired.get(proc.holder, at), at)

    def _lease(self, shard: int, obj: dict[str, Any], by: str) -> None:
        holder = obj["spec"].get("holderIdentity")
        before = self.holders.get(shard)
        self.holders[shard] = holder
        self._raised(shard, holder, before, int(obj["spec"].get("leaseTransitions") or 0),
                     by)
        if before is None or holder in (None, before):
            return
        self.checked["lease changes"] += 1
        duration, _, retry = self.sim.schedule.leader
        now = self.sim.sched.t
        failed = self.impaired.get(before)
        if not any(p.holder == before and self._working(p) for p in self.sim.operators()):
            return  # it has failed, and not come back
        if failed is None or failed < now - duration - 2 * retry - 1.0:
            self.fail("a shard moved without its leader failing",
                      f"the Lease of shard {shard} passed from {before} to {holder}, yet "
                      f"{before} has not failed since "
                      f"{'its start' if failed is None else f't={failed:.2f}'}")

    def _raised(self, shard: int, holder: str | None, before: str | None,
                token: int, by: str) -> None:
        """1b': the Lease's token changed while its holder stayed: an outbid, counted per
        process (`by`; a leader restarted knows nothing of its earlier outbids)."""
        last = self.tokens.get(shard)
        self.tokens[shard] = token
        if holder != before:
            self.term[shard] = token
        if last is None or token == last or holder is None or holder != before:
            return
        self.raises[shard, by] += 1
        self.checked["token raises"] += 1
        what = (f"the Lease of shard {shard}, held by {holder}, had its token raised from "
                f"{last} to {token}")
        if token - 1 not in self.stored:
            self.fail("a Lease's token raised for no plan",
                      f"{what}, one above no token a plan's status carried "
                      f"({sorted(self.stored)})")
        if self.raises[shard, by] > self.arrivals[shard]:
            self.fail("a Lease's token raised again and again",
                      f"{what}: {self.raises[shard, by]} raises by {by} while "
                      f"{self.arrivals[shard]} plan(s) arrived in the shard (created in it "
                      "or moved in)")

    def gave_up(self, proc: OpReplica, exc: Exception) -> None:
        """1b': `proc`'s elector gave a raise of its token up (`exc`, LostLease)."""
        elector = proc.op.elector if proc.op is not None else None
        holder, token = self.authority(proc.shard)
        self.checked["raises given up"] += 1
        if elector is not None and self._working(proc) and elector.leading() and \
                (holder, token) == (proc.holder, elector.token()):
            self.dropped.append(f"{proc.group} ({proc.holder}) leads, holding the Lease of "
                                f"shard {proc.shard} with token {token}, yet gave up a "
                                f"raise of it: {exc}")

    # --- 1, 2, 4: the world's writes ---------------------------------------------------------

    def _write(self, w: WorldWrite) -> None:
        what = (f"{w.actor} changed {w.backend} ({w.method}) {w.before} -> {w.after} "
                f"with token {w.token}, holder {w.holder}, label {w.label}")
        token, label = w.token, w.label
        if token is None or label is None:
            self.fail("unfenced write", f"{what}: a change outside any step's fence")
        name, recorded, (holder, current) = self.landing.pop(id(w))
        tr = self.named[name]
        what = f"{what} (plan {name})"
        shard = self._shard_of_group(w.group)
        first = self.token_holder.setdefault((shard, token), w.holder)
        if first != w.holder:
            self.fail("one token, two holders", f"{what}; token {token} of shard {shard} "
                      f"was first used by {first}")
        if tr.max_token is not None and token < tr.max_token:
            self.fail("token went backwards", f"{what}; token {tr.max_token} wrote before")
        tr.max_token = token if tr.max_token is None else max(tr.max_token, token)
        if current is not None and token < current and (
                holder != w.holder or token < self.term.get(shard, 0)):  # (a holder's
            # own raise, for another plan, does not depose it)
            self.fail("write from a deposed leader", f"{what}; the Lease of shard {shard} "
                      f"had passed to {holder} with token {current}")
        parts = label.split("/")
        run, step, revert = parts[0], parts[1] if len(parts) > 1 else "", parts[2:] == [
            "revert"]
        if tr.uid is None:
            self.fail("world changed with no plan", f"{what}: FailoverPlan {name} no "
                      "longer exists (its finalizer was removed)")
        owner = self.run_uid.setdefault(run, tr.uid)
        if owner != tr.uid:
            self.fail("a run of a deleted plan changed the world",
                      f"{what}: run {run} belongs to the deleted object (uid {owner}); the "
                      f"plan is now uid {tr.uid}")
        base = _reverted(step, tr.steps)
        if base not in tr.steps:
            self.fail("a step the plan does not have", f"{what}: the spec of uid "
                      f"{tr.uid} has steps {sorted(tr.steps)}")
        self._acts(tr, (shard, token), w.holder, (holder, current), what)
        if revert:
            return
        self.written.setdefault(run, set()).add(step)
        if recorded in TERMINAL:
            self.fail("world changed after the step was recorded terminal",
                      f"{what}; {w.group}'s journal recorded {step} {recorded}")
        if tr.steps[base] == "restore":
            self.restores[label] += 1
            if self.restores[label] > 1:
                self.fail("a restore performed twice", f"{what}; restores under {label}: "
                          f"{self.restores[label]}")

    def _shard_of_group(self, group: str) -> int:
        from tests.reliability.sim.operators import OpReplica

        proc = self.sim._by_group.get(group)
        return proc.shard if isinstance(proc, OpReplica) else 0

    # --- 3, 4, 5: the plan object's changes -----------------------------------------------

    def _change(self, tr: PlanTrack, kind: str, obj: dict[str, Any], by: str) -> None:
        from tests.reliability.sim.operators import OpReplica

        meta = obj["metadata"]
        uid = meta["uid"]
        tr.changed = self.sim.sched.t
        if kind == "ADDED":
            tr.last, tr.visited, tr.top, tr.max_token = None, set(), {}, None
        before = self.shard(tr) if kind != "ADDED" else None
        tr.labels = dict(meta.get("labels") or {})
        shard = self.shard(tr)
        if shard is not None:
            tr.visited.add(shard)
            if shard != before and kind != "DELETED":
                self.arrivals[shard] += 1
        if self.rival is not None:
            tr.visited.add(self.rival)
            self.arrivals[self.rival] += kind == "ADDED"
        token = (obj.get("status") or {}).get("fencingToken")
        if token is not None:
            self.stored.add(int(token))
        proc = self.sim._by_group.get(by)
        if isinstance(proc, OpReplica) and kind != "ADDED":  # a replica acted on it
            assert proc.op is not None
            token = proc.op.elector._token
            if token is None:
                self.fail("a plan acted on by a replica that never led",
                          f"{by} changed {tr.name} ({kind})")
            what = "its status" if (obj.get("status") or {}) != tr.status else kind
            self._acts(tr, (proc.shard, token), proc.holder, self.authority(proc.shard),
                       f"{by} ({proc.holder}) changed {tr.name} ({what})")
        if kind == "ADDED":
            tr.uid, tr.status = uid, {}
            tr.steps = {s["name"]: s["action"] for s in obj["spec"]["steps"]}
            return
        if kind == "DELETED":
            self._released(tr, uid, by)
            tr.uid, tr.steps = None, {}
            return
        status = obj.get("status") or {}
        if status != tr.status:
            tr.status = status
            self._status(tr, uid, status)

    def _status(self, tr: PlanTrack, uid: str, status: dict[str, Any]) -> None:
        run = status.get("run") or {}
        rid = run.get("id")
        if not rid:
            return
        self.checked["status"] += 1
        owner = self.run_uid.setdefault(rid, uid)
        if owner != uid:
            self.fail("a recreated plan inherited a run", f"the status of {tr.name} (uid "
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

    def _released(self, tr: PlanTrack, uid: str, by: str) -> None:
        """The object `uid` is gone: its finalizer was removed by `by` (a replica). Every
        run of it that changed the world is finished in some replica's journal with no
        step that wrote left open; the run its last status showed unfinished is finished
        in the remover's own journal (it adopted it, and finished it)."""
        self.checked["released"] += 1
        last = tr.status.get("run") or {}
        for rid in [r for r, u in self.run_uid.items() if u == uid]:
            wrote = self.written.get(rid, set())
            if wrote:  # the remover's record first: it let the plan go on what it holds
                mine = self.sim.paths.get(by)
                paths = sorted(self.sim.paths.values(), key=lambda path: path != mine)
                records = [self._record(path, rid) for path in paths]
                done = [steps for finished, steps in records if finished is not None]
                if not done:
                    self.fail("finalizer dropped while a run is active",
                              f"{by} removed the finalizer of {tr.name} (uid {uid}): run "
                              f"{rid} changed the world ({', '.join(sorted(wrote))}) and no "
                              "journal has it finished")
                still = sorted(s for s in wrote if done[0].get(s) in OPEN)
                if still:
                    self.fail("finalizer dropped while a step may have changed the world",
                              f"{by} removed the finalizer of {tr.name} (uid {uid}): steps "
                              f"{still} of run {rid} wrote and are not recorded terminal")
            if rid == last.get("id") and last.get("finishedAt") is None:
                path = self.sim.paths.get(by)
                if path is None or self._record(path, rid)[0] is None:
                    self.fail("finalizer dropped while a run is active",
                              f"{by} removed the finalizer of {tr.name} (uid {uid}) while "
                              f"its status shows run {rid} {last.get('phase')}, which {by}'s "
                              "journal does not have finished")

    def _record(self, path: str, rid: str) -> tuple[float | None, dict[str, str]]:
        db = self._db(path)
        row = db.execute("SELECT finished_at FROM runs WHERE id=?", (rid,)).fetchone()
        steps = dict(db.execute("SELECT name, status FROM steps WHERE run_id=?", (rid,)))
        return (row[0] if row else None), steps

    # --- 5, 6: at the end --------------------------------------------------------------------

    def mirrored(self, proc: OpReplica, name: str) -> None:
        """After the faults healed, each reconcile the leader completes leaves the status
        saying what its journal says."""
        tr = self.named[name]
        obj = self.sim.cluster.objects.get(tr.key)
        rt = proc.op._runtimes.get(name) if proc.op is not None else None
        if obj is None or rt is None or rt.uid != obj["metadata"]["uid"] or rt.dirty:
            return  # gone, invalid, created again meanwhile, or not leading as it wrote
        self.checked["mirrored"] += 1
        journal = Journal(proc.path)
        try:
            truth = status_mod.build(journal, name, generation=None, previous={},
                                     now=self.sim.sched.now())
        finally:
            journal.close()
        got, want = _shown(obj.get("status") or {}), _shown(truth)
        if got != want:
            self.fail("status does not mirror the journal",
                      f"after the faults healed, {proc.group} reconciled {name}, yet its "
                      f"status shows {got} while {proc.group}'s journal says {want}")
        run = truth.get("run") or {}
        self._course(run, run.get("steps", []), f"{proc.group}'s journal")
        tr.settled = (truth.get("phase"), run.get("kind"), run.get("id"), tr.sp.writes)

    def at_end(self) -> None:
        """The faults healed long enough ago: a replica leads, has reconciled the plan
        (so its status mirrors its journal), and a plan its record says is failed over
        has the traffic on the backup site."""
        sim = self.sim
        healed = f"{sim.schedule.horizon - sim.schedule.active:.0f} s after the faults healed"
        for tr in self.plans.values():
            shard = self.shard(tr)
            if tr.key not in sim.cluster.objects or shard is None:
                continue
            if self._leader(shard, working=False) is None:
                self.fail("no leader after the faults healed",
                          f"{healed}, no replica leads shard {shard} of {tr.name} (the "
                          f"Lease: {self.authority(shard)[0]}"
                          + (f"; the unsharded group's: {self.authority(self.rival)[0]})"
                             if self.rival is not None else ")"))
            if tr.settled is None:
                self.fail("status not written again after the faults healed",
                          f"{healed}, no leader has completed a reconcile of {tr.name}")
            phase, kind, run, writes = tr.settled
            if kind == "failover" and phase == Phase.FAILED_OVER.value \
                    and writes == tr.sp.writes and tr.sp.serving_site() != "dc-b":
                self.fail("the record and the world disagree",
                          f"{tr.name} says FailedOver (run {run}), but its traffic is on "
                          f"{tr.sp.serving_site()}")


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

"""The invariants, checked after every event of a simulated schedule.

An event is one actor's run between two yield points, or one fault/request the schedule
injects, or the clock moving on. After each, `Checker` looks at the writes the backends
saw during it (`WorldWrite`s, attributed to a fencing token, holder and step label), at
the journal (read through its own SQLite connection, only when another connection
committed: `PRAGMA data_version`), and at the simulated world. A broken invariant raises
`Violation`, which stops the schedule.

1. **One writer.** Every write to the world carries a fencing token (it is made inside a
   step's fence); a token belongs to one holder; accepted tokens never decrease; no write
   lands from a holder whose lease another holder had taken by then (a larger token).
2. **Terminal is terminal.** No write under a step's label ("RUN/STEP") once the journal
   recorded the step succeeded/failed/skipped/reverted (a revert, "RUN/STEP/revert", only
   until the step is recorded reverted); and a terminal step record never changes again
   except succeeded/failed -> reverted.
3. **Exact failback.** When a failback run completes (phase Healthy), each object of the
   world (the traffic backend, the DNS zone) is as the incident's first step that wrote to
   it found it when it prepared (what that step read then: `Sim.prepared`) — a person's
   edit made before the controller touched the object is the world the controller found,
   and what a failback brings back; an object no step wrote is as it was when the
   incident opened, or as a person left it since (the controller never changed it) — or
   the run names the difference (`left` in its steps' evidence, or its outcome).
4. **Protection armed.** While the phase says Healthy or Degraded, the service cannot
   have been failing (the site carrying the traffic is down) for longer than it takes to
   detect (twice the failures in a row when a probe loop is late: the excused timeouts),
   dwell, sit out the cooldown and take the lease, counted from when the phase last
   became Healthy/Degraded and a replica able to act existed.
5. **Exactly once.** A step is performed (writes made under its label) by more than one
   attempt only when each is a recorded attempt (the step's `evidence.fencing`: token and
   holder per attempt) of an idempotent write (traffic, DNS, revert); a restore is never
   performed twice.
6. **Journal and status agree.** The status (what the replicas' journal listeners
   mirrored last) equals what the journal says, after every event. No statement that
   wrote a run, a step or the plan's state since the last listener call: nothing to read;
   otherwise the status as it was then (a read transaction kept since) is compared.
7. **One writable primary.** No write leaves two database nodes that would accept writes
   (a node cut off from us counts: its own clients still write to it); a promotion finds
   the old primary fenced already (stopped, read-only, or powered off by a command or by a
   person, whose human step `fence-primary` the journal then records done); a step
   promotes at most once (a failback's `db-failback` promotes the old primary again,
   with the promoted node fenced first).
8. **No committed write lost by a failback.** When a failback's `db-failback` promotes
   the old primary, it holds every row a client committed on the node it takes over from
   while that node was the primary (its timeline); and when a failback completes
   Healthy, the node that takes writes holds every row ever committed at the node the
   incident promoted.

Only what an event can have changed is read: the journal when another connection wrote
one of its tables (noted per statement), the world when a backend changed.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from controller import model
from controller.model import Phase, StepStatus
from tests.reliability.sim import plans
from tests.reliability.sim.db_checks import DatabaseChecks
from tests.reliability.sim.harness import Violation
from tests.reliability.sim.scheduler import WALL_BASE
from tests.reliability.sim.world import writable

if TYPE_CHECKING:
    from tests.reliability.sim.harness import Sim
    from tests.reliability.sim.world import WorldWrite

TERMINAL = {s.value for s in model.TERMINAL}
UNDONE = {StepStatus.SUCCEEDED.value, StepStatus.FAILED.value}  # may become reverted
IDEMPOTENT = {"traffic", "dns", "revert", "db-failback"}  # each attempt reads, then resumes
WATCHING = {Phase.HEALTHY.value, Phase.DEGRADED.value}
JOURNAL_TABLES = frozenset({"runs", "steps", "plan_state", "leases"})  # what is checked
EMPTY_STATUS: tuple[Any, ...] = (None, None, ())


def status_of(db: sqlite3.Connection, plan: str) -> tuple[Any, ...]:
    """What a status shows of the journal: phase, active site, and the unfinished runs and
    the newest run with each step's status."""
    row = db.execute("SELECT phase, active_site FROM plan_state WHERE plan=?",
                     (plan,)).fetchone()
    rows = db.execute(
        "SELECT r.id, r.kind, r.phase, r.finished_at IS NOT NULL, s.name, s.status "
        "FROM runs r LEFT JOIN steps s ON s.run_id = r.id WHERE r.plan=? AND "
        "(r.finished_at IS NULL OR r.id = (SELECT id FROM runs WHERE plan=? "
        "ORDER BY started_at DESC, rowid DESC LIMIT 1)) "
        "ORDER BY r.started_at, r.rowid, s.idx", (plan, plan)).fetchall()
    runs: dict[str, tuple[Any, ...]] = {}
    steps: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        runs[r[0]] = (r[0], r[1], r[2], bool(r[3]))
        if r[4] is not None:
            steps.setdefault(r[0], []).append((r[4], r[5]))
    return (row[0] if row else None, row[1] if row else None,
            tuple((*v, tuple(steps.get(k, ()))) for k, v in runs.items()))


_UNSEEN = object()


@dataclass
class Incident:
    """From the first failover run until a failback completes: what each object must be
    after the failback (`expected`), fixed for an object once a step of the incident's
    failover runs wrote to it (`fixed`: what that step found when it prepared)."""

    first: str  # the first failover run
    expected: dict[str, Any]  # backend -> its state as the failback must leave it
    fixed: set[str] = field(default_factory=set)
    found_by: dict[str, str] = field(default_factory=dict)  # backend -> "RUN/STEP"
    failovers: set[str] = field(default_factory=set)


class Checker:
    def __init__(self, sim: Sim):
        self.sim = sim
        self.plan = sim.plan.name
        self.conn: sqlite3.Connection | None = None
        self.phase: str | None = None
        self.site: str | None = None
        self._step_rows: list[Any] = []
        self._run_rows: list[Any] = []
        self.runs: dict[str, tuple[str, str, float | None, str | None, int]] = {}
        self.steps: dict[tuple[str, str], tuple[str, str]] = {}
        self.lease: tuple[str | None, int | None] = (None, None)
        self.token_holder: dict[int, str | None] = {}
        self.max_token: int | None = None
        self.performers: dict[str, dict[int, tuple[int | None, str | None]]] = {}
        self.restores: Counter[str] = Counter()
        self.database = DatabaseChecks(self)  # 7's promotions, 8
        self.world = sim.raw.world()
        self.incident: Incident | None = None
        self.bad_since: float | None = None
        self.watching_since: float | None = 0.0
        self.capable_since: float | None = 0.0
        self.n_runs = 0
        self._counted: float | None = None
        self.history: list[tuple[float, str, str, str | None, str]] = []  # with capture
        self.lease_expires = 0.0  # the journal lease's expiry (simulated seconds)
        self.checked: Counter[str] = Counter()  # how often each invariant had work to do
        trig = sim.plan.spec.trigger
        faults = sim.schedule.faults
        slow = 4.0 if faults.slow or faults.sluggish else 0.0  # one slow call in a tick
        longest_hang = max((b - a for _, a, b in faults.hangs), default=0.0)
        # detect (failed probes in a row, one tick each, and as many excused while the
        # probe loop is late), dwell, the cooldown of the last failover (it started before
        # the phase became Healthy), the trip's tick, slack
        detect = trig.consecutive_failures * (2 if sim.schedule.late else 1)
        self.bound = (detect * plans.TICK + trig.dwell + trig.cooldown
                      + 2 * plans.TICK + slow + longest_hang + 1.0)

    def start(self) -> None:
        self.conn = self.sim.files.connection()
        self.sim.dirty.update(("runs", "steps", "plan_state", "leases"))

    def close(self) -> None:
        if self.conn is not None:
            self.sim.files.give_back(self.conn)
            self.conn = None

    def fail(self, kind: str, detail: str) -> NoReturn:
        raise Violation(kind, detail)

    def authority(self) -> tuple[str | None, int | None]:
        """Who holds the plan's lease now, and its token (the coordinator's, if used)."""
        if self.sim.schedule.coordinator:
            lease = self.sim.lease
            return lease.holder, lease.token or None
        return self.lease

    # --- after each event ----------------------------------------------------------------

    def after_event(self, actor: Any) -> None:
        sim = self.sim
        world_before = self.world
        if sim.writes:
            writes, sim.writes = sim.writes, []
            for w in writes:
                self._write(w)
            self.world = sim.raw.world()
        if sim.dirty and self.conn is not None:
            tables, sim.dirty = sim.dirty, set()
            if not tables.isdisjoint(JOURNAL_TABLES):
                self._journal(world_before, tables)
        if sim.primary_up or sim.serving_site() != "dc-a":  # serving: nothing to watch
            self.bad_since = self.capable_since = None
        else:
            self._protection()

    def after_time(self) -> None:
        self.after_event(None)

    # --- 1, 2, 5: writes -------------------------------------------------------------------

    def _write(self, w: WorldWrite) -> None:
        database = self.sim.raw.roles.get(w.backend) == "database"
        if database and len(writable(w.after)) > 1:
            self.fail("two writable primaries", f"{w.actor} changed {w.backend} "
                      f"({w.method}) {w.before} -> {w.after}: {writable(w.after)} all accept "
                      "writes")
        if w.group == "person":
            incident = self.incident
            if incident is not None and w.backend in incident.expected \
                    and w.backend not in incident.fixed:
                incident.expected[w.backend] = w.after  # the world the controller finds
            return
        what = (f"{w.actor} changed {w.backend} ({w.method}) {w.before} -> {w.after} "
                f"with token {w.token}, holder {w.holder}, label {w.label}")
        token, label = w.token, w.label
        if token is None or label is None:
            self.fail("unfenced write", f"{what}: a change outside any step's fence cannot "
                      "be told apart from a deposed controller's")
        first = self.token_holder.setdefault(token, w.holder)
        if first != w.holder:
            self.fail("one token, two holders", f"{what}; token {token} was first used by "
                      f"{first}")
        if self.max_token is not None and token < self.max_token:
            self.fail("token went backwards", f"{what}; token {self.max_token} wrote before")
        self.max_token = token if self.max_token is None else max(self.max_token, token)
        holder, current = self.authority()
        if current is not None and token < current:
            self.fail("write from a deposed holder", f"{what}; the lease had passed to "
                      f"{holder} with token {current}")
        parts = label.split("/")
        run, step, revert = parts[0], parts[1] if len(parts) > 1 else "", parts[2:] == [
            "revert"]
        rec = self.steps.get((run, step))
        if rec is None:
            self.fail("write under an unknown label", f"{what}: the journal has no step "
                      f"{step!r} in run {run!r}")
            return
        action, status = rec
        if revert:
            if status == StepStatus.REVERTED.value:
                self.fail("world changed after the step was recorded reverted", what)
            return
        if status in TERMINAL:
            self.fail("world changed after the step was recorded terminal",
                      f"{what}; the journal says {step} is {status}")
        incident = self.incident
        if incident is not None and w.backend in incident.expected \
                and w.backend not in incident.fixed and run in incident.failovers:
            # the first step of the incident to write this object: a failback must
            # bring back what it found when it prepared
            incident.fixed.add(w.backend)
            seen = self.sim.prepared.get(label, {}).get(w.backend, _UNSEEN)
            if seen is _UNSEEN:
                self.fail("harness", f"{what}: the step wrote {w.backend} without reading "
                          "it in prepare first (the simulation cannot tell what it found)")
            incident.expected[w.backend] = seen
            incident.found_by[w.backend] = label
        if action == "promote":
            if w.method == "promote":
                self.database.promotion(w, run, what)
            return  # a fence is idempotent; the promotion is counted above
        if action == "db-failback" and w.method == "promote":
            self.database.promotion(w, run, what)
            self.database.nothing_lost(w, what)
        if action == "restore":
            self.restores[label] += 1
            if self.restores[label] > 1:
                self.fail("a restore performed twice", f"{what}; restores under "
                          f"{label}: {self.restores[label]}")
            return
        performers = self.performers.setdefault(label, {})
        if w.actor_id in performers:
            return
        performers[w.actor_id] = (w.token, w.holder)
        if len(performers) < 2:
            return
        self.checked["retried"] += 1
        if action not in IDEMPOTENT:
            self.fail("a step performed twice", f"{what}; {action} is not an idempotent "
                      "write")
        evidence = self._evidence(run, step)
        recorded = Counter((a.get("token"), a.get("holder"))
                           for a in evidence.get("fencing", []) if isinstance(a, dict))
        seen = Counter(performers.values())
        missing = {k: n for k, n in seen.items() if n > recorded.get(k, 0)}
        if missing:
            self.fail("a step performed twice without a recorded retry",
                      f"{what}; {len(performers)} attempts wrote under {w.label} as "
                      f"(token, holder) {dict(seen)}, the step records attempts "
                      f"{dict(recorded)}")

    def _evidence(self, run: str, step: str) -> dict[str, Any]:
        assert self.conn is not None
        row = self.conn.execute("SELECT evidence FROM steps WHERE run_id=? AND name=?",
                                (run, step)).fetchone()
        return json.loads(row[0]) if row else {}

    # --- 2, 3, 6: the journal ---------------------------------------------------------------

    def _journal(self, world_before: dict[str, Any], tables: set[str]) -> None:
        """Read what changed in the journal (by table) and check it."""
        conn = self.conn
        assert conn is not None
        sim, t = self.sim, self.sim.sched.t
        if "plan_state" in tables:
            row = conn.execute("SELECT phase, active_site FROM plan_state WHERE plan=?",
                               (self.plan,)).fetchone()
            phase, self.site = (row[0], row[1]) if row else (None, None)
            if phase != self.phase:
                sim.trace("journal: plan phase %s -> %s", self.phase, phase)
                if phase in WATCHING and (self.phase or Phase.HEALTHY.value) not in WATCHING:
                    self.watching_since = t
                self.phase = phase
        if "leases" in tables and not sim.schedule.coordinator:
            lease = conn.execute("SELECT holder, token, expires_at FROM leases WHERE name=?",
                                 (f"plan/{self.plan}",)).fetchone()
            self.lease = (lease[0], int(lease[1])) if lease else (None, None)
            self.lease_expires = float(lease[2]) - WALL_BASE if lease else 0.0
        if "runs" in tables or "steps" in tables:
            self._runs(world_before, tables)
        if sim.mirror_seq != sim.status_seq:  # written since the last listener call
            self.checked["status compared"] += 1
            truth = (self.phase, self.site, self.runs_status())
            mirror = sim.mirror_status()
            if mirror != truth:
                self.fail("journal and status disagree", f"the status shows {mirror}, the "
                          f"journal says {truth}")

    def _runs(self, world_before: dict[str, Any], tables: set[str]) -> None:
        conn = self.conn
        assert conn is not None
        sim, t = self.sim, self.sim.sched.t
        if "steps" in tables:
            step_rows = conn.execute("SELECT run_id, name, action, status FROM steps "
                                     "ORDER BY run_id, idx").fetchall()
            steps = {(r[0], r[1]): (r[2], r[3]) for r in step_rows}
        else:
            step_rows, steps = self._step_rows, self.steps
        if "runs" in tables:
            run_rows = conn.execute("SELECT id, kind, phase, finished_at, outcome FROM runs "
                                    "WHERE plan=? ORDER BY started_at, rowid",
                                    (self.plan,)).fetchall()
        else:
            run_rows = self._run_rows
        if steps != self.steps:
            for key, (_, status) in steps.items():
                old = self.steps.get(key)
                if old is None or old[1] == status:
                    if old is None and sim.capture:
                        self.history.append((t, key[0], key[1], None, status))
                    continue
                if sim.capture:
                    self.history.append((t, key[0], key[1], old[1], status))
                if old[1] in TERMINAL and not (old[1] in UNDONE
                                               and status == StepStatus.REVERTED.value):
                    self.fail("a terminal step changed", f"step {key[1]} of run {key[0]} "
                              f"was recorded {old[1]}, now {status}")
                sim.trace("journal: step %s/%s %s -> %s", key[0], key[1], old[1], status)
        n_steps = Counter(r[0] for r in step_rows)
        runs = {r[0]: (r[1], r[2], r[3], r[4], n_steps[r[0]]) for r in run_rows}
        if runs != self.runs:
            self._runs_changed(runs, world_before)
        self.runs, self.steps = runs, steps
        self._step_rows, self._run_rows = step_rows, run_rows

    def _runs_changed(self, runs: dict[str, tuple[str, str, float | None, str | None, int]],
                      world_before: dict[str, Any]) -> None:
        sim = self.sim
        for run_id, (kind, rphase, finished, outcome, n_steps) in runs.items():
            old_run = self.runs.get(run_id)
            if old_run is None:
                self.n_runs += 1
                sim.trace("journal: run %s (%s, %d steps) starts: %s", run_id, kind, n_steps,
                          rphase)
                if kind == "failover" and n_steps and self.incident is None:
                    self.incident = Incident(run_id, dict(world_before))
                    sim.trace("incident opens; the world before it: %s", str(world_before))
                if kind == "failover" and n_steps and self.incident is not None:
                    self.incident.failovers.add(run_id)
            if finished is not None and (old_run is None or old_run[2] is None):
                sim.trace("journal: run %s ends %s: %.160s", run_id, rphase, outcome or "")
                if kind == "failback" and n_steps and rphase == Phase.HEALTHY.value:
                    self._failback_done(run_id, outcome or "")

    def runs_status(self) -> tuple[Any, ...]:
        """The runs as a status shows them (`status_of`), from what was read last."""
        by_run: dict[str, list[tuple[str, str]]] = {}
        for r in self._step_rows:
            by_run.setdefault(r[0], []).append((r[1], r[3]))
        newest = next(reversed(self.runs)) if self.runs else None
        return tuple(
            (run_id, kind, rphase, finished is not None, tuple(by_run.get(run_id, ())))
            for run_id, (kind, rphase, finished, _, _) in self.runs.items()
            if finished is None or run_id == newest)

    def _failback_done(self, run_id: str, outcome: str) -> None:
        incident = self.incident
        if incident is None:
            return
        self.incident = None
        self.checked["failback"] += 1
        self.database.home_has_every_row(run_id)
        expected = incident.expected
        differ = {name: (now, expected[name]) for name, now in self.world.items()
                  if name in expected and now != expected[name]}
        if not differ:
            self.sim.trace("failback %s: the world is as the incident %s found it", run_id,
                           incident.first)
            return
        assert self.conn is not None
        named = "left" in outcome
        for (evidence,) in self.conn.execute("SELECT evidence FROM steps WHERE run_id=?",
                                             (run_id,)):
            ev = json.loads(evidence)
            reverted = ev.get("reverted") if isinstance(ev.get("reverted"), dict) else {}
            if ev.get("left") or reverted.get("left"):
                named = True
        if not named:
            what = "; ".join(
                f"{name} is {now}, not {want} as "
                + (f"step {incident.found_by[name]} found it when it prepared"
                   if name in incident.found_by else
                   "it was when the incident opened (no step wrote it)")
                for name, (now, want) in differ.items())
            self.fail("failback did not restore the world", f"run {run_id} completed "
                      f"Healthy, but {what} (the incident's first failover: "
                      f"{incident.first}), and the run names no difference "
                      f"(outcome: {outcome!r})")
        self.sim.trace("failback %s: the world differs from what the incident %s found "
                       "(%s), and the run says so", run_id, incident.first,
                       ", ".join(sorted(differ)))

    # --- 4: protection -------------------------------------------------------------------

    def _able(self) -> bool:
        """Can a replica act now: one is alive, its loop running (not paused), it reaches
        the lease, and the lease is free, lapsed, or held by a live process?"""
        sim, t = self.sim, self.sim.sched.t
        capable = [p for p in sim.processes if p.alive and p.kind == "replica"
                   and not p.cut_lease and p.loop is not None and not p.loop.finished
                   and p.loop.frozen_until <= t]
        if not capable:
            return False
        holder, _ = self.authority()
        lapsed = (sim.lease.expires if sim.schedule.coordinator else self.lease_expires) <= t
        if not holder or lapsed:
            return True
        return any(p.alive and p.holder == holder and p.loop is not None
                   and p.loop.frozen_until <= t and not p.cut_lease for p in sim.processes)

    def _protection(self) -> None:
        sim, t = self.sim, self.sim.sched.t
        if sim.serving_ok():
            self.bad_since = None
        elif self.bad_since is None:
            self.bad_since = t
        if (self.phase or Phase.HEALTHY.value) not in WATCHING or self.bad_since is None \
                or self.watching_since is None or not self._able():
            self.capable_since = None  # (only the latest stretch of all three counts)
            return
        if self.capable_since is None:
            self.capable_since = t
        since = max(self.bad_since, self.capable_since, self.watching_since)
        if t - since > self.bound / 2:
            self.checked["protection"] += 0 if self._counted == since else 1
            self._counted = since
        if t - since > self.bound:
            self.fail("protection not armed", f"the service has failed since "
                      f"t={self.bad_since:.2f} (traffic on {sim.serving_site()}, primary "
                      f"down), the plan has said {self.phase} since "
                      f"t={self.watching_since:.2f}, a replica could act since "
                      f"t={self.capable_since:.2f}, and no run started within "
                      f"{self.bound:.1f} s")

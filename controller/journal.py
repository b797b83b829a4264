"""The embedded SQLite journal: runs, steps, decisions, requests, approvals, audit, leases.

It is the default store because it needs no server and survives a killed process: WAL
mode with `synchronous=FULL`, every write its own short transaction, so a committed row
is on disk before the next step starts. A resumed controller reads it back and never
repeats a finished step. A journal that cannot be read is reported (JournalError), never
silently replaced. Why each further rule:

- **Messages are redacted, the record never is.** `secrets.redact` runs over each message
  as it is written — a run's reason and outcome, a step's error, a decision's sentence, an
  audit detail, and the message fields (`_MESSAGE_KEYS`: detail, error, why, ...) inside
  evidence, policy and readiness — and never over a serialised document, a key, a number,
  a name or an id: a secret `test` must not turn the step `link-test` into `link-***`,
  nor `7000` a timestamp into `179***000` (either made every later tick fail). Evidence
  outside its message fields is data a revert restores (records, weights, snapshots), so
  it is kept exactly; producers redact their own messages too (`executor._describe`).
- **What every tick asks is indexed** (a run's audit trail, the plan's newest decision,
  its pending request, its unfinished run), so per-tick cost does not grow with history
  (tests/benchmarks/bench_journal.py), and `prune` removes finished runs older than a
  retention: only those marked archived unless forced (the archive is the record once
  they are gone), and never an active run nor one a failback still needs.

The file itself (opening, the integrity check, the schema and its migrations, what a
full, damaged or unwritable file says) is `controller.journal_file`'s; the plans' leases
(who may act, with a fencing token) are `controller.journal_leases`'.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.fencing import LostLease
from controller.journal_file import SCHEMA_VERSION as SCHEMA_VERSION  # re-exported
from controller.journal_file import JournalError as JournalError  # re-exported
from controller.journal_leases import Leases
from controller.model import Decision, Origin, Phase, StepRecord, StepStatus, Trigger
from controller.secrets import redact


def _trigger(stored: str, kind: str, requested_by: str) -> Trigger:
    """A run's trigger; one written by a controller of version 2 still running on a
    migrated file has none stored, and gets the rule of `journal_file._migrate_2` ("controller": the
    policy; anyone else: a request)."""
    if stored:
        return Trigger(stored)
    if requested_by != "controller":
        return Trigger.REQUEST
    return Trigger.CLEAR if kind == "failback" else Trigger.TRIP


_MESSAGE_KEYS = frozenset({"detail", "last_detail", "error", "errors", "revertError", "why",
                           "note", "summary", "message", "reason", "stderr", "output"})
"""Keys whose values (at any depth of evidence, policy or readiness) are messages."""


Holder = tuple[str, str]
"""(lease name, holder): a write made "as" this holder is refused (LostLease) in the same
transaction unless the lease is still theirs — the journal is a fenced target too."""


@dataclass(frozen=True)
class Run:
    id: str
    plan: str
    kind: str  # "failover" | "failback"
    phase: Phase
    level: int | None
    reason: str
    requested_by: str
    detected_at: float
    started_at: float
    finished_at: float | None
    approved: bool
    outcome: str | None
    steps: list[dict[str, Any]]  # the step definitions this run executes, frozen at start
    trigger: Trigger  # what started it: a threshold trip, a clear, or a person's request

    @property
    def origin(self) -> Origin:
        """Why the run started: trigger, requester ("controller" for the policy), reason."""
        return Origin(self.trigger, self.requested_by, self.reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "plan": self.plan, "kind": self.kind, "phase": self.phase.value,
            "level": self.level, "reason": self.reason, "requestedBy": self.requested_by,
            "origin": self.trigger.value, "cause": self.origin.text(),
            "detectedAt": self.detected_at, "startedAt": self.started_at,
            "finishedAt": self.finished_at, "approved": self.approved, "outcome": self.outcome,
        }


@dataclass(frozen=True)
class PlanState:
    plan: str
    phase: Phase
    level: int | None
    active_site: str | None
    last_decision: str | None
    policy: dict[str, Any]
    updated_at: float
    readiness: dict[str, Any]


@dataclass(frozen=True)
class Pruned:
    """What `Journal.prune` removed, and the old finished runs it kept unarchived."""

    runs: list[str] = field(default_factory=list)
    unarchived: list[str] = field(default_factory=list)  # pass force=True to remove them
    decisions: int = 0
    audit: int = 0


def _scrub(value: Any, *, message: bool = False) -> Any:
    """A copy of a JSON value with the strings under message keys redacted; every other
    key and value (names, ids, numbers, the data a revert restores) exactly as it was."""
    if isinstance(value, str):
        return redact(value) if message else value
    if isinstance(value, dict):
        return {k: _scrub(v, message=message or k in _MESSAGE_KEYS) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, message=message) for v in value]
    return value


def _dumps(value: Any) -> str:
    """Serialise a document whose message fields are redacted (never the text itself)."""
    return json.dumps(_scrub(value), sort_keys=True, default=str)


def _dumps_exact(value: Any) -> str:
    """Serialise a document holding no messages (a run's frozen step definitions)."""
    return json.dumps(value, sort_keys=True, default=str)


def _redact_opt(text: str | None) -> str | None:
    return redact(text) if text else text


class Journal(Leases):
    """The record of every plan's runs, steps, decisions, requests, approvals, audit and
    leases, on the SQLite file that `JournalFile` opens (module docstring: the rules; the
    leases: `Leases`)."""

    def __init__(self, path: str | Path):
        # called with a plan name after each committed change of its runs, steps or state
        # (the operator mirrors them into the FailoverPlan's status); a listener that
        # raises fails the write's caller, so a step cannot go on unrecorded
        self.listeners: list[Callable[[str], None]] = []
        super().__init__(path)

    @staticmethod
    def _check_holder(db: sqlite3.Connection, holder: Holder | None) -> None:
        if holder is None:
            return
        row = db.execute("SELECT holder FROM leases WHERE name=?", (holder[0],)).fetchone()
        if row is None or row["holder"] != holder[1]:
            raise LostLease(f"{holder[1]} no longer holds {holder[0]} (now "
                            f"{row['holder'] if row else 'nobody'}); the write was refused")

    # --- audit and decisions ---------------------------------------------------------------

    def audit(self, *, at: float, actor: str, action: str, plan: str | None = None,
              run_id: str | None = None, detail: str = "", keep: Sequence[str] = ()) -> None:
        """Record who did what. `detail` is a message, redacted except for the parts named
        in `keep`: identifiers a reader parses back (a notice's `[notice KEY]` tag, its
        route), written exactly as given."""
        text = redact(detail, keep)
        with self._tx() as db:
            self._changes()
            db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                       "VALUES (?,?,?,?,?,?)", (at, actor, action, plan, run_id, text))

    def audit_trail(self, *, plan: str | None = None, run_id: str | None = None
                    ) -> list[dict[str, Any]]:
        where = [c for c, v in (("plan=?", plan), ("run_id=?", run_id)) if v is not None]
        args = tuple(v for v in (plan, run_id) if v is not None)
        rows = self._all("SELECT * FROM audit" + (f" WHERE {' AND '.join(where)}" if where
                                                  else "") + " ORDER BY id", args)
        return [dict(r) for r in rows]

    def record_decision(self, plan: str, decision: Decision) -> None:
        """Keep a decision (an observation: committed without waiting for the disk, as
        `JournalFile._tx(durable=False)` says; a run it starts is durable)."""
        with self._tx(durable=False) as db:
            self._changes()
            self._insert_decision(db, plan, decision)

    @staticmethod
    def _insert_decision(db: sqlite3.Connection, plan: str, decision: Decision) -> None:
        db.execute("INSERT INTO decisions (plan, at, action, level, sentence) "
                   "VALUES (?,?,?,?,?)", (plan, decision.at, decision.action,
                                          decision.level, redact(decision.sentence)))

    def decisions(self, plan: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM decisions WHERE plan=? ORDER BY id DESC LIMIT ?",
                         (plan, limit))
        return [dict(r) for r in reversed(rows)]

    # --- plan state -------------------------------------------------------------------------

    def plan_state(self, plan: str) -> PlanState | None:
        rows = self._cached(("state", plan), "SELECT * FROM plan_state WHERE plan=?", (plan,))
        if not rows:
            return None
        r = rows[0]
        return PlanState(r["plan"], Phase(r["phase"]), r["level"], r["active_site"],
                         r["last_decision"] or None,  # stored as '' before any decision
                         json.loads(r["policy"]), r["updated_at"],
                         json.loads(r["readiness"]))

    def plan_states(self) -> list[PlanState]:
        names = [r["plan"] for r in self._all("SELECT plan FROM plan_state ORDER BY plan")]
        return [s for n in names if (s := self.plan_state(n)) is not None]

    def save_plan_state(self, state: PlanState, *, durable: bool = True,
                        decision: Decision | None = None) -> None:
        """Write the plan's state row, and `decision` (`record_decision`) in the same
        transaction. `durable=False` when only observations moved (the policy window, the
        decision sentence, readiness), not its phase, level or site: committed without
        waiting for the disk (`JournalFile._tx`)."""
        with self._tx(durable=durable) as db:
            self._changes(("state", state.plan))
            if decision is not None:
                self._insert_decision(db, state.plan, decision)
            db.execute(
                "INSERT INTO plan_state (plan, phase, level, active_site, last_decision, "
                "policy, updated_at, readiness) VALUES (?,?,?,?,?,?,?,?) "
                "ON CONFLICT(plan) DO UPDATE SET "
                "phase=excluded.phase, level=excluded.level, active_site=excluded.active_site, "
                "last_decision=excluded.last_decision, policy=excluded.policy, "
                "updated_at=excluded.updated_at, readiness=excluded.readiness",
                (state.plan, state.phase.value, state.level, state.active_site,
                 redact(state.last_decision or ""), _dumps(state.policy), state.updated_at,
                 _dumps(state.readiness)))
        self._changed(plan=state.plan)

    # --- one cluster object per plan name (the operator) -----------------------------------

    def plan_uid(self, plan: str) -> str | None:
        """The uid of the FailoverPlan object whose record `plan` holds (None: unbound)."""
        rows = self._all("SELECT value FROM meta WHERE key=?", (f"plan-uid/{plan}",))
        return str(rows[0][0]) if rows else None

    def bind_plan_uid(self, plan: str, uid: str) -> None:
        """Bind the record of `plan` to the object `uid`. Not waited on the disk for
        (`JournalFile._tx(durable=False)`): a run recorded under the binding is durable,
        which writes the binding with it; a binding lost with nothing after it is made
        again."""
        with self._tx(durable=False) as db:
            self._changes()
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)",
                       (f"plan-uid/{plan}", uid))

    def retire_plan(self, plan: str, *, as_name: str) -> None:
        """Move the whole record of `plan` (runs, state, requests, decisions, audit) under
        `as_name` (the operator's `NAME@UID` of a deleted object), in one transaction: a
        plan created again under the same name starts with none of it, and the old
        record is kept, not lost. Unbinds its uid; no listener is told (no plan changed)."""
        with self._tx() as db:
            for table in ("runs", "requests", "decisions", "audit"):
                db.execute(f"UPDATE {table} SET plan=? WHERE plan=?", (as_name, plan))
            db.execute("UPDATE OR REPLACE plan_state SET plan=? WHERE plan=?", (as_name, plan))
            db.execute("DELETE FROM meta WHERE key=?", (f"plan-uid/{plan}",))

    # --- requests (manual failover / failback) -----------------------------------------------

    def add_request(self, *, plan: str, kind: str, actor: str, reason: str, at: float,
                    level: int | None = None) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO requests (plan, kind, actor, reason, at, level) "
                             "VALUES (?,?,?,?,?,?)",
                             (plan, kind, actor, redact(reason), at, level))
            db.execute("INSERT INTO audit (at, actor, action, plan, detail) VALUES (?,?,?,?,?)",
                       (at, actor, f"request-{kind}", plan, redact(reason)))
            return int(cur.lastrowid or 0)

    def pending_request(self, plan: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM requests WHERE plan=? AND run_id IS NULL "
                         "ORDER BY id LIMIT 1", (plan,))
        return dict(rows[0]) if rows else None

    def request(self, request_id: int) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM requests WHERE id=?", (request_id,))
        return dict(rows[0]) if rows else None

    # --- runs and steps ---------------------------------------------------------------------

    def start_run(self, *, plan: str, kind: str, phase: Phase, level: int | None, reason: str,
                  requested_by: str, detected_at: float, now: float,
                  steps: list[dict[str, Any]], approved: bool,
                  request_id: int | None = None, holder: Holder | None = None,
                  trigger: Trigger | None = None) -> Run:
        """Record a run, its steps pending. `trigger` None: by the rule of runs recorded
        before triggers were (`_trigger`): "controller" is the policy, anyone else a request."""
        trigger = trigger or _trigger("", kind, requested_by)
        run_id = f"{plan}-{kind}-{int(now)}-{uuid.uuid4().hex[:6]}"
        with self._tx() as db:
            self._changes(("active", plan))
            self._check_holder(db, holder)
            db.execute(
                "INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                "detected_at, started_at, approved, steps_json, origin) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, plan, kind, phase.value, level, redact(reason), requested_by,
                 detected_at, now, int(approved), _dumps_exact(steps), trigger.value))
            for i, step in enumerate(steps):
                db.execute("INSERT INTO steps (run_id, idx, name, action, status, target_s) "
                           "VALUES (?,?,?,?,?,?)", (run_id, i, step["name"], step["action"],
                                                    StepStatus.PENDING.value, step.get("target")))
            if request_id is not None:
                db.execute("UPDATE requests SET run_id=? WHERE id=?", (run_id, request_id))
            db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                       "VALUES (?,?,?,?,?,?)", (now, requested_by, f"start-{kind}", plan, run_id,
                                                redact(reason)))
        run = self.run(run_id)
        assert run is not None
        self._changed(plan=plan)
        return run

    def _changed(self, *, plan: str | None = None, run_id: str | None = None) -> None:
        if not self.listeners:
            return
        if plan is None:
            rows = self._all("SELECT plan FROM runs WHERE id=?", (run_id,))
            if not rows:
                return
            plan = str(rows[0]["plan"])
        for listener in list(self.listeners):
            listener(plan)

    def import_run(self, run: dict[str, Any], steps: list[dict[str, Any]]) -> bool:
        """Adopt a run recorded elsewhere (another replica, via the FailoverPlan status):
        insert it when unknown here, and take every step the other record has finished
        further. Returns True when anything changed. Never moves a step backwards."""
        final = {StepStatus.SUCCEEDED.value, StepStatus.FAILED.value,
                 StepStatus.REVERTED.value, StepStatus.SKIPPED.value}
        changed = False
        with self._tx() as db:
            if db.execute("SELECT 1 FROM runs WHERE id=?", (run["id"],)).fetchone() is None:
                db.execute(
                    "INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                    "detected_at, started_at, finished_at, approved, outcome, steps_json, "
                    "origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run["id"], run["plan"], run["kind"], run["phase"], run.get("level"),
                     redact(run.get("reason") or ""), run.get("requestedBy", ""),
                     run["detectedAt"], run["startedAt"], run.get("finishedAt"),
                     int(bool(run.get("approved"))), _redact_opt(run.get("outcome")),
                     _dumps_exact(run.get("definition", [])), run.get("origin", "")))
                for s in steps:
                    db.execute("INSERT INTO steps (run_id, idx, name, action, status, "
                               "target_s) VALUES (?,?,?,?,?,?)",
                               (run["id"], s["index"], s["name"], s["action"],
                                StepStatus.PENDING.value, s.get("targetSeconds")))
                changed = True
            elif run.get("finishedAt") is not None:
                cur = db.execute("UPDATE runs SET phase=?, finished_at=?, outcome=? "
                                 "WHERE id=? AND finished_at IS NULL",
                                 (run["phase"], run["finishedAt"],
                                  _redact_opt(run.get("outcome")), run["id"]))
                changed = changed or cur.rowcount > 0
            for s in steps:
                row = db.execute("SELECT status, attempts FROM steps WHERE run_id=? AND "
                                 "name=?", (run["id"], s["name"])).fetchone()
                if row is None or row["status"] in final:
                    continue
                further = s["status"] in final or (s["status"] == StepStatus.RUNNING.value
                                                    and row["status"] == "pending")
                if not further:
                    continue
                db.execute(
                    "UPDATE steps SET status=?, started_at=?, finished_at=?, elapsed_s=?, "
                    "since_detection_s=?, met=?, attempts=?, evidence=?, error=?, "
                    "approved_by=? WHERE run_id=? AND name=?",
                    (s["status"], s.get("startedAt"), s.get("finishedAt"),
                     s.get("elapsedSeconds"), s.get("sinceDetectionSeconds"),
                     None if s.get("met") is None else int(s["met"]), s.get("attempts", 0),
                     _dumps(s.get("evidence", {})), _redact_opt(s.get("error")),
                     s.get("approvedBy"),
                     run["id"], s["name"]))
                changed = True
        return changed

    def _run_from(self, r: sqlite3.Row) -> Run:
        return Run(r["id"], r["plan"], r["kind"], Phase(r["phase"]), r["level"], r["reason"],
                   r["requested_by"], r["detected_at"], r["started_at"], r["finished_at"],
                   bool(r["approved"]), r["outcome"], json.loads(r["steps_json"]),
                   _trigger(r["origin"], r["kind"], r["requested_by"]))

    def run(self, run_id: str) -> Run | None:
        rows = self._all("SELECT * FROM runs WHERE id=?", (run_id,))
        return self._run_from(rows[0]) if rows else None

    def runs(self, plan: str | None = None, limit: int = 20) -> list[Run]:
        if plan is None:
            rows = self._all("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?",
                             (limit,))
        else:
            rows = self._all("SELECT * FROM runs WHERE plan=? "
                             "ORDER BY started_at DESC, rowid DESC LIMIT ?", (plan, limit))
        return [self._run_from(r) for r in rows]

    def active_run(self, plan: str) -> Run | None:
        """The unfinished run, if it is newer than every finished run of the plan (an
        older unfinished run, adopted from another replica's record, is superseded)."""
        rows = self._cached(("active", plan),
                            "SELECT * FROM runs WHERE plan=? AND finished_at IS NULL AND "
                            "started_at >= COALESCE((SELECT MAX(started_at) FROM runs WHERE "
                            "plan=? AND finished_at IS NOT NULL), 0) "
                            "ORDER BY started_at DESC LIMIT 1", (plan, plan))
        return self._run_from(rows[0]) if rows else None

    def supersede(self, plan: str, *, now: float, holder: Holder | None = None) -> list[str]:
        """Close every unfinished run older than a finished newer one, as superseded:
        such a run is never resumed (its trip, approval and cooldown are history)."""
        if not self._all("SELECT 1 FROM runs r WHERE plan=? AND finished_at IS NULL AND "
                         "EXISTS (SELECT 1 FROM runs n WHERE n.plan=r.plan AND n.finished_at "
                         "IS NOT NULL AND n.started_at > r.started_at) LIMIT 1", (plan,)):
            return []  # the common case: read only, no transaction
        with self._tx() as db:
            self._check_holder(db, holder)
            rows = db.execute(
                "SELECT id, (SELECT id FROM runs n WHERE n.plan=r.plan AND n.finished_at IS "
                "NOT NULL AND n.started_at > r.started_at ORDER BY n.started_at DESC LIMIT 1) "
                "AS newer FROM runs r WHERE plan=? AND finished_at IS NULL", (plan,)).fetchall()
            stale = [(r["id"], r["newer"]) for r in rows if r["newer"] is not None]
            for run_id, newer in stale:
                db.execute("UPDATE runs SET phase=?, finished_at=?, outcome=? WHERE id=?",
                           (Phase.SUPERSEDED.value, now,
                            f"superseded by the newer run {newer}, which finished first; "
                            "never resumed", run_id))
                db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                           "VALUES (?,?,?,?,?,?)", (now, "controller", "supersede", plan, run_id,
                                                    f"superseded by {newer}"))
        if stale:
            self._changed(plan=plan)
        return [run_id for run_id, _ in stale]

    def last_finished_run(self, plan: str, kind: str) -> Run | None:
        rows = self._all("SELECT * FROM runs WHERE plan=? AND kind=? AND finished_at IS NOT NULL"
                         " ORDER BY finished_at DESC LIMIT 1", (plan, kind))
        return self._run_from(rows[0]) if rows else None

    def update_run(self, run_id: str, *, phase: Phase, level: int | None = None,
                   finished_at: float | None = None, outcome: str | None = None,
                   approved: bool | None = None, holder: Holder | None = None) -> None:
        with self._tx() as db:
            self._check_holder(db, holder)
            db.execute(
                "UPDATE runs SET phase=?, level=COALESCE(?, level), "
                "finished_at=COALESCE(?, finished_at), outcome=COALESCE(?, outcome), "
                "approved=COALESCE(?, approved) WHERE id=?",
                (phase.value, level, finished_at, _redact_opt(outcome),
                 None if approved is None else int(approved), run_id))
        self._changed(run_id=run_id)

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._all("SELECT * FROM steps WHERE run_id=? ORDER BY idx", (run_id,))
        return [
            StepRecord(
                run_id=r["run_id"], index=r["idx"], name=r["name"], action=r["action"],
                status=StepStatus(r["status"]), target_s=r["target_s"],
                started_at=r["started_at"], finished_at=r["finished_at"],
                elapsed_s=r["elapsed_s"], since_detection_s=r["since_detection_s"],
                met=None if r["met"] is None else bool(r["met"]), attempts=r["attempts"],
                evidence=json.loads(r["evidence"]), error=r["error"],
                approved_by=r["approved_by"],
            )
            for r in rows
        ]

    def step(self, run_id: str, name: str) -> StepRecord:
        return next(s for s in self.steps(run_id) if s.name == name)

    def save_step(self, rec: StepRecord, *, holder: Holder | None = None) -> None:
        with self._tx() as db:
            self._changes()  # steps only
            self._check_holder(db, holder)
            db.execute(
                "UPDATE steps SET status=?, started_at=?, finished_at=?, elapsed_s=?, "
                "since_detection_s=?, met=?, attempts=?, evidence=?, error=?, approved_by=? "
                "WHERE run_id=? AND name=?",
                (rec.status.value, rec.started_at, rec.finished_at, rec.elapsed_s,
                 rec.since_detection_s, None if rec.met is None else int(rec.met), rec.attempts,
                 _dumps(rec.evidence), _redact_opt(rec.error),
                 rec.approved_by, rec.run_id, rec.name))
        self._changed(run_id=rec.run_id)

    # --- approvals --------------------------------------------------------------------------

    def approve(self, *, run_id: str, step: str, actor: str, at: float,
                action: str = "approve") -> None:
        """Record a person's approval (or, for a human step, that it is done); audited."""
        run = self.run(run_id)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO approvals (run_id, step, actor, at) "
                       "VALUES (?,?,?,?)",
                       (run_id, step, actor, at))
            db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                       "VALUES (?,?,?,?,?,?)", (at, actor, action,
                                                run.plan if run else None, run_id,
                                                f"step {step}" if step else "run"))

    def approvals_at(self, run_id: str, step: str) -> list[tuple[str, float]]:
        rows = self._all("SELECT actor, at FROM approvals WHERE run_id=? AND step=? "
                         "ORDER BY at", (run_id, step))
        return [(r["actor"], r["at"]) for r in rows]

    def approvals(self, run_id: str, step: str) -> list[str]:
        return [actor for actor, _ in self.approvals_at(run_id, step)]

    # --- retention --------------------------------------------------------------------------

    def mark_archived(self, run_id: str, *, at: float) -> None:
        """Record that a finished run has been archived elsewhere, so `prune` may remove it."""
        with self._tx() as db:
            row = db.execute("SELECT finished_at FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self.path}")
            if row["finished_at"] is None:
                raise ValueError(f"run {run_id} has not finished; only a finished run can be "
                                 "archived")
            db.execute("UPDATE runs SET archived_at=? WHERE id=?", (at, run_id))

    def unarchived(self, plan: str, *, finished_before: float | None = None) -> list[str]:
        """The plan's finished runs not yet archived (`mark_archived`), oldest first."""
        rows = self._all("SELECT id FROM runs WHERE plan=? AND finished_at IS NOT NULL AND "
                         "finished_at < ? AND archived_at IS NULL ORDER BY finished_at",
                         (plan, float("inf") if finished_before is None else finished_before))
        return [r["id"] for r in rows]

    def last_audit(self, plan: str, action: str) -> dict[str, Any] | None:
        """The plan's newest audit entry of `action` (e.g. the last failed archive)."""
        rows = self._all("SELECT * FROM audit WHERE plan=? AND action=? ORDER BY id DESC "
                         "LIMIT 1", (plan, action))
        return dict(rows[0]) if rows else None

    def prune(self, *, before: float, force: bool = False, batch: int = 5000) -> Pruned:
        """Remove finished runs that finished before `before` (with their steps, approvals,
        audit rows and the requests that started them), then the decisions older than
        `before` and than every run still kept of their plan.

        Never removed, even with `force`: an unfinished run, and any run of a plan's open
        incident (started after its last completed failback), because a failback reverts
        every failover since then from that run's recorded evidence. A run not marked
        archived (`mark_archived`) is kept and listed in `unarchived` unless `force`.
        Audit rows of no run (requests, approvals outside a run, backups) are removed only
        with `force`: nothing archives them. Rows go about `batch` at a time, each batch
        its own short transaction, so a running controller's ticks never wait long."""
        healthy = Phase.HEALTHY.value
        rows = self._all(
            "SELECT id, archived_at FROM runs r WHERE finished_at IS NOT NULL AND finished_at < ?"
            " AND started_at <= COALESCE((SELECT MAX(f.started_at) FROM runs f WHERE "
            "f.plan=r.plan AND f.kind='failback' AND f.phase=? AND f.finished_at IS NOT NULL),"
            " -1) ORDER BY finished_at", (before, healthy))
        removed = [r["id"] for r in rows if force or r["archived_at"] is not None]
        unarchived = [r["id"] for r in rows if not force and r["archived_at"] is None]
        changed: set[str] = set()
        per_tx = max(1, batch // 50)  # a run has tens of rows: about `batch` rows a time
        for i in range(0, len(removed), per_tx):
            group = removed[i:i + per_tx]
            marks = ",".join("?" * len(group))
            with self._tx() as db:
                changed.update(r["plan"] for r in db.execute(
                    f"SELECT DISTINCT plan FROM runs WHERE id IN ({marks})", group))
                for table in ("steps", "approvals", "audit", "requests"):
                    db.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", group)
                db.execute(f"DELETE FROM runs WHERE id IN ({marks})", group)
        decisions = 0
        for (plan,) in self._all("SELECT DISTINCT plan FROM decisions"):
            oldest = self._all("SELECT MIN(detected_at) FROM runs WHERE plan=?", (plan,))[0][0]
            until = before if oldest is None else min(before, oldest)
            decisions += self._delete_batched(
                "decisions", "plan=? AND at < ?", (plan, until), batch)
        audit = 0
        if force:
            audit = self._delete_batched("audit", "run_id IS NULL AND at < ?", (before,), batch)
        for plan in sorted(changed):
            self._changed(plan=plan)
        return Pruned(runs=removed, unarchived=unarchived, decisions=decisions, audit=audit)

    def _delete_batched(self, table: str, where: str, args: tuple[Any, ...], batch: int) -> int:
        total = 0
        while True:
            with self._tx() as db:
                cur = db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM "
                                 f"{table} WHERE {where} LIMIT ?)", (*args, batch))
            total += cur.rowcount
            if cur.rowcount < batch:
                return total

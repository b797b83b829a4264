"""The embedded SQLite journal: runs, steps, decisions, requests, approvals, audit, leases.

It is the default store because it needs no server and survives a killed process: WAL
mode with `synchronous=FULL`, every write its own short transaction, so a committed row
is on disk before the next step starts. A resumed controller reads it back and never
repeats a finished step. A journal that cannot be read is reported (JournalError), never
silently replaced. Every text written here goes through `secrets.redact` first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.model import Decision, Phase, StepRecord, StepStatus
from controller.secrets import redact

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, plan TEXT NOT NULL, kind TEXT NOT NULL, phase TEXT NOT NULL,
  level INTEGER, reason TEXT NOT NULL, requested_by TEXT NOT NULL,
  detected_at REAL NOT NULL, started_at REAL NOT NULL, finished_at REAL,
  approved INTEGER NOT NULL DEFAULT 0, outcome TEXT, steps_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_plan ON runs(plan, started_at);
CREATE TABLE IF NOT EXISTS steps (
  run_id TEXT NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL, name TEXT NOT NULL,
  action TEXT NOT NULL, status TEXT NOT NULL, target_s REAL, started_at REAL,
  finished_at REAL, elapsed_s REAL, since_detection_s REAL, met INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0, evidence TEXT NOT NULL DEFAULT '{}', error TEXT,
  approved_by TEXT, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, at REAL NOT NULL,
  action TEXT NOT NULL, level INTEGER, sentence TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan_state (
  plan TEXT PRIMARY KEY, phase TEXT NOT NULL, level INTEGER, active_site TEXT,
  last_decision TEXT, policy TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL,
  readiness TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, kind TEXT NOT NULL,
  actor TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL, level INTEGER, run_id TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
  run_id TEXT NOT NULL, step TEXT NOT NULL, actor TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (run_id, step, actor)
);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, plan TEXT, run_id TEXT, detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS leases (
  name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_at REAL NOT NULL
);
"""


class JournalError(Exception):
    """The journal file is missing, unreadable or corrupt; the message says what to do."""


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

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "plan": self.plan, "kind": self.kind, "phase": self.phase.value,
            "level": self.level, "reason": self.reason, "requestedBy": self.requested_by,
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


def _dumps(value: Any) -> str:
    return redact(json.dumps(value, sort_keys=True, default=str))


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        # called with a plan name after each committed change of its runs, steps or state
        # (the operator mirrors them into the FailoverPlan's status); a listener that
        # raises fails the write's caller, so a step cannot go on unrecorded
        self.listeners: list[Callable[[str], None]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db.executescript(_SCHEMA)
            self._check_version()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise JournalError(
                f"journal {self.path} cannot be used ({exc}). It was left untouched: move it "
                "aside (keep it for the incident record) or point --journal at another file."
            ) from None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {row[0]} is newer than this failoverctl understands"
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # --- audit and decisions ---------------------------------------------------------------

    def audit(self, *, at: float, actor: str, action: str, plan: str | None = None,
              run_id: str | None = None, detail: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                       "VALUES (?,?,?,?,?,?)", (at, actor, action, plan, run_id, redact(detail)))

    def audit_trail(self, *, plan: str | None = None, run_id: str | None = None
                    ) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM audit WHERE (? IS NULL OR plan=?) AND "
                         "(? IS NULL OR run_id=?) ORDER BY id", (plan, plan, run_id, run_id))
        return [dict(r) for r in rows]

    def record_decision(self, plan: str, decision: Decision) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO decisions (plan, at, action, level, sentence) "
                       "VALUES (?,?,?,?,?)", (plan, decision.at, decision.action,
                                              decision.level, redact(decision.sentence)))

    def decisions(self, plan: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM decisions WHERE plan=? ORDER BY id DESC LIMIT ?",
                         (plan, limit))
        return [dict(r) for r in reversed(rows)]

    # --- plan state -------------------------------------------------------------------------

    def plan_state(self, plan: str) -> PlanState | None:
        rows = self._all("SELECT * FROM plan_state WHERE plan=?", (plan,))
        if not rows:
            return None
        r = rows[0]
        return PlanState(r["plan"], Phase(r["phase"]), r["level"], r["active_site"],
                         r["last_decision"], json.loads(r["policy"]), r["updated_at"],
                         json.loads(r["readiness"]))

    def plan_states(self) -> list[PlanState]:
        names = [r["plan"] for r in self._all("SELECT plan FROM plan_state ORDER BY plan")]
        return [s for n in names if (s := self.plan_state(n)) is not None]

    def save_plan_state(self, state: PlanState) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO plan_state VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(plan) DO UPDATE SET "
                "phase=excluded.phase, level=excluded.level, active_site=excluded.active_site, "
                "last_decision=excluded.last_decision, policy=excluded.policy, "
                "updated_at=excluded.updated_at, readiness=excluded.readiness",
                (state.plan, state.phase.value, state.level, state.active_site,
                 redact(state.last_decision or ""), _dumps(state.policy), state.updated_at,
                 _dumps(state.readiness)))
        self._changed(plan=state.plan)

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
                  request_id: int | None = None) -> Run:
        run_id = f"{plan}-{kind}-{int(now)}-{uuid.uuid4().hex[:6]}"
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                "detected_at, started_at, approved, steps_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, plan, kind, phase.value, level, redact(reason), requested_by,
                 detected_at, now, int(approved), _dumps(steps)))
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
                    "detected_at, started_at, finished_at, approved, outcome, steps_json) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run["id"], run["plan"], run["kind"], run["phase"], run.get("level"),
                     run.get("reason", ""), run.get("requestedBy", ""), run["detectedAt"],
                     run["startedAt"], run.get("finishedAt"), int(bool(run.get("approved"))),
                     run.get("outcome"), _dumps(run.get("definition", []))))
                for s in steps:
                    db.execute("INSERT INTO steps (run_id, idx, name, action, status, "
                               "target_s) VALUES (?,?,?,?,?,?)",
                               (run["id"], s["index"], s["name"], s["action"],
                                StepStatus.PENDING.value, s.get("targetSeconds")))
                changed = True
            elif run.get("finishedAt") is not None:
                cur = db.execute("UPDATE runs SET phase=?, finished_at=?, outcome=? "
                                 "WHERE id=? AND finished_at IS NULL",
                                 (run["phase"], run["finishedAt"], run.get("outcome"),
                                  run["id"]))
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
                     _dumps(s.get("evidence", {})), s.get("error"), s.get("approvedBy"),
                     run["id"], s["name"]))
                changed = True
        return changed

    def _run_from(self, r: sqlite3.Row) -> Run:
        return Run(r["id"], r["plan"], r["kind"], Phase(r["phase"]), r["level"], r["reason"],
                   r["requested_by"], r["detected_at"], r["started_at"], r["finished_at"],
                   bool(r["approved"]), r["outcome"], json.loads(r["steps_json"]))

    def run(self, run_id: str) -> Run | None:
        rows = self._all("SELECT * FROM runs WHERE id=?", (run_id,))
        return self._run_from(rows[0]) if rows else None

    def runs(self, plan: str | None = None, limit: int = 20) -> list[Run]:
        rows = self._all("SELECT * FROM runs WHERE (? IS NULL OR plan=?) "
                         "ORDER BY started_at DESC, rowid DESC LIMIT ?", (plan, plan, limit))
        return [self._run_from(r) for r in rows]

    def active_run(self, plan: str) -> Run | None:
        rows = self._all("SELECT * FROM runs WHERE plan=? AND finished_at IS NULL "
                         "ORDER BY started_at DESC LIMIT 1", (plan,))
        return self._run_from(rows[0]) if rows else None

    def last_finished_run(self, plan: str, kind: str) -> Run | None:
        rows = self._all("SELECT * FROM runs WHERE plan=? AND kind=? AND finished_at IS NOT NULL"
                         " ORDER BY finished_at DESC LIMIT 1", (plan, kind))
        return self._run_from(rows[0]) if rows else None

    def update_run(self, run_id: str, *, phase: Phase, level: int | None = None,
                   finished_at: float | None = None, outcome: str | None = None,
                   approved: bool | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET phase=?, level=COALESCE(?, level), "
                "finished_at=COALESCE(?, finished_at), outcome=COALESCE(?, outcome), "
                "approved=COALESCE(?, approved) WHERE id=?",
                (phase.value, level, finished_at, redact(outcome) if outcome else None,
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

    def save_step(self, rec: StepRecord) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status=?, started_at=?, finished_at=?, elapsed_s=?, "
                "since_detection_s=?, met=?, attempts=?, evidence=?, error=?, approved_by=? "
                "WHERE run_id=? AND name=?",
                (rec.status.value, rec.started_at, rec.finished_at, rec.elapsed_s,
                 rec.since_detection_s, None if rec.met is None else int(rec.met), rec.attempts,
                 _dumps(rec.evidence), redact(rec.error) if rec.error else None,
                 rec.approved_by, rec.run_id, rec.name))
        self._changed(run_id=rec.run_id)

    # --- approvals --------------------------------------------------------------------------

    def approve(self, *, run_id: str, step: str, actor: str, at: float,
                action: str = "approve") -> None:
        """Record a person's approval (or, for a human step, that it is done); audited."""
        run = self.run(run_id)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO approvals VALUES (?,?,?,?)",
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

    # --- single-actor lease -----------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, *, ttl: float, now: float) -> int | None:
        """Take or renew the lease; returns the fencing token, or None if someone else holds it."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM leases WHERE name=?", (name,)).fetchone()
            if row is None:
                db.execute("INSERT INTO leases VALUES (?,?,?,?)", (name, holder, 1, now + ttl))
                return 1
            if row["holder"] != holder and row["expires_at"] > now:
                return None
            if row["holder"] == holder and row["expires_at"] - now > ttl / 2:
                return int(row["token"])  # ours with time to spare: renew later, no write
            token = row["token"] if row["holder"] == holder else row["token"] + 1
            db.execute("UPDATE leases SET holder=?, token=?, expires_at=? WHERE name=?",
                       (holder, token, now + ttl, name))
            return int(token)

    def lease(self, name: str) -> dict[str, Any] | None:
        rows = self._all("SELECT * FROM leases WHERE name=?", (name,))
        return dict(rows[0]) if rows else None

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE name=? AND holder=?", (name, holder))

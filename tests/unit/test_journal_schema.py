"""A journal written by any released failoverctl opens, is migrated forward in one
transaction, keeps every row, and then runs a failover through the Engine; a journal from
a newer failoverctl, or a file that is not a journal, is refused and left untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller import journal_file as journal_module
from controller.journal import SCHEMA_VERSION, Journal, JournalError
from controller.model import Phase, StepStatus, Trigger
from tests.unit.test_engine import World, make_plan

# Schema version 1 as released in 327a905 (git show 327a905:controller/journal.py), and
# as released again from de771ea on with `plan_state.readiness` but the same version.
RELEASED_1A = """
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
  last_decision TEXT, policy TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL
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
RELEASED_1B = RELEASED_1A.replace(
    "last_decision TEXT, policy TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL\n",
    "last_decision TEXT, policy TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL,\n"
    "  readiness TEXT NOT NULL DEFAULT '{}'\n")
RELEASED = {"1 (327a905, no readiness)": RELEASED_1A, "1 (de771ea, readiness)": RELEASED_1B}

PLAN = "memory-drill"
OLD_RUN = f"{PLAN}-failover-1690000000-abc123"
OLD_BACK = f"{PLAN}-failback-1690000600-def456"
STEPS = '[{"action": "notify", "name": "notify-incident"}]'


def write_released(path: Path, ddl: str) -> None:
    """A journal as the released code left it: a finished failover and failback, with
    decisions, a request, an approval, audit rows, a lease and the plan's state."""
    db = sqlite3.connect(path)
    db.executescript(ddl)
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    for run_id, kind, at, phase in ((OLD_RUN, "failover", 1_690_000_000.0, "FailedOver"),
                                    (OLD_BACK, "failback", 1_690_000_600.0, "Healthy")):
        db.execute("INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                   "detected_at, started_at, finished_at, approved, outcome, steps_json) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (run_id, PLAN, kind, phase, 1, "tripped: web down", "controller",
                    at - 5, at, at + 60, 1, f"{kind} complete", STEPS))
        db.execute("INSERT INTO steps (run_id, idx, name, action, status, target_s, "
                   "started_at, finished_at, elapsed_s, since_detection_s, met, attempts, "
                   "evidence) VALUES (?,0,'notify-incident','notify','succeeded',600,?,?,1,6,"
                   "1,1,'{\"recipients\": [\"@all\"]}')", (run_id, at, at + 1))
        db.execute("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                   "VALUES (?,?,?,?,?,?)", (at, "controller", f"start-{kind}", PLAN, run_id,
                                            "tripped: web down"))
    db.execute("INSERT INTO decisions (plan, at, action, level, sentence) "
               "VALUES (?,?,?,?,?)", (PLAN, 1_690_000_000.0, "trip", 1, "tripped: web down"))
    db.execute("INSERT INTO requests (plan, kind, actor, reason, at, level, run_id) "
               "VALUES (?,?,?,?,?,?,?)", (PLAN, "failback", "oncall", "back home",
                                          1_690_000_590.0, None, OLD_BACK))
    db.execute("INSERT INTO approvals VALUES (?,?,?,?)", (OLD_RUN, "", "alice", 1_690_000_001.0))
    db.execute("INSERT INTO leases VALUES (?,?,?,?)", (f"plan/{PLAN}", "", 7, 0.0))
    columns = [r[1] for r in db.execute("PRAGMA table_info(plan_state)")]
    values = [PLAN, "Healthy", None, "dc-a", "cleared: all core services up", "{}",
              1_690_000_700.0, '{"score": 100.0}'][:len(columns)]
    db.execute(f"INSERT INTO plan_state VALUES ({','.join('?' * len(values))})", values)
    db.commit()
    db.close()


def schema_of(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not-null, default, key) and every index."""
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    out: dict[str, object] = {t: [tuple(r[1:]) for r in db.execute(f"PRAGMA table_info({t})")]
                              for t in tables}
    out["indexes"] = sorted(
        (r[0], r[1], tuple(c[2] for c in db.execute(f"PRAGMA index_info({r[0]})")))
        for r in db.execute("SELECT name, tbl_name FROM sqlite_master WHERE type='index' "
                            "AND name NOT LIKE 'sqlite_autoindex%'"))
    db.close()
    return out


@pytest.mark.parametrize("release", list(RELEASED))
def test_a_released_journal_is_migrated_and_runs_a_failover(tmp_path: Path,
                                                            release: str) -> None:
    path = tmp_path / "journal.db"
    write_released(path, RELEASED[release])
    journal = Journal(path)
    try:
        # every row written by the released version reads back
        state = journal.plan_state(PLAN)
        assert state is not None and state.phase is Phase.HEALTHY
        assert state.last_decision == "cleared: all core services up"
        assert state.readiness == ({} if "no readiness" in release else {"score": 100.0})
        runs = journal.runs(PLAN)
        assert [r.id for r in runs] == [OLD_BACK, OLD_RUN]
        assert runs[1].steps == [{"action": "notify", "name": "notify-incident"}]
        assert [r.trigger for r in runs] == [Trigger.CLEAR, Trigger.TRIP]  # by "controller"
        assert journal.steps(OLD_RUN)[0].evidence == {"recipients": ["@all"]}
        assert journal.approvals(OLD_RUN, "") == ["alice"]
        assert journal.request(1)["run_id"] == OLD_BACK  # type: ignore[index]
        assert [a["action"] for a in journal.audit_trail(plan=PLAN)] == [
            "start-failover", "start-failback"]
        assert journal.decisions(PLAN)[0]["sentence"] == "tripped: web down"
        # and the Engine carries on with it: the first tick writes the plan state (the
        # released 1 without readiness failed here: "7 columns but 8 values supplied")
        world = World(make_plan(), journal)
        assert world.tick(True).phase is Phase.HEALTHY
        assert world.outage().phase is Phase.FAILED_OVER
        run = world.run()
        assert run.id not in (OLD_RUN, OLD_BACK)
        assert all(s.status is StepStatus.SUCCEEDED for s in world.steps())
        assert journal.lease(f"plan/{PLAN}")["token"] > 7  # type: ignore[index]
    finally:
        journal.close()
    fresh = tmp_path / "fresh.db"
    Journal(fresh).close()
    assert schema_of(path) == schema_of(fresh)  # migrated = created new, index for index
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta").fetchall())
    assert meta["schema"] == str(SCHEMA_VERSION)


def test_a_failed_migration_leaves_the_journal_as_it_was(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal.db"
    write_released(path, RELEASED_1A)
    before = schema_of(path)
    real = journal_module._MIGRATIONS[1]

    def half_way(db: sqlite3.Connection) -> None:
        real(db)  # every change made ...
        raise sqlite3.OperationalError("disk I/O error (injected after the migration ran)")

    monkeypatch.setitem(journal_module._MIGRATIONS, 1, half_way)
    with pytest.raises(JournalError, match="left untouched"):
        Journal(path)
    assert schema_of(path) == before  # ... and all of it rolled back
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("1",)
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
    db.close()
    monkeypatch.setitem(journal_module._MIGRATIONS, 1, real)
    journal = Journal(path)  # the next start migrates it
    assert journal.plan_state(PLAN) is not None
    journal.close()


def test_a_journal_from_a_newer_failoverctl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(JournalError, match=rf"schema version {SCHEMA_VERSION + 1} is newer "
                                           "than this failoverctl understands"):
        Journal(path)


def test_a_database_that_is_not_a_journal_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a failover journal"):
        Journal(path)
    tables = [r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["invoices"]


def test_a_version_2_journal_gets_each_runs_origin(tmp_path: Path) -> None:
    """Version 2 kept no trigger: a run "controller" started came from the policy (a trip,
    or a clear for a failback), any other from a person's request."""
    path = tmp_path / "journal.db"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE runs DROP COLUMN origin")  # as version 2 created it
    db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    for run_id, kind, by in ((OLD_RUN, "failover", "controller"),
                             (OLD_BACK, "failback", "controller"),
                             (f"{PLAN}-failover-1690001000-aaa111", "failover", "alice")):
        db.execute("INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                   "detected_at, started_at, approved, steps_json) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (run_id, PLAN, kind, "FailedOver", None, "why", by, 1.0, 2.0, 1, "[]"))
    db.commit()
    db.close()
    journal = Journal(path)
    try:
        assert {r.requested_by + "/" + r.kind: r.trigger for r in journal.runs(PLAN)} == {
            "controller/failover": Trigger.TRIP, "controller/failback": Trigger.CLEAR,
            "alice/failover": Trigger.REQUEST}
    finally:
        journal.close()
    fresh = tmp_path / "fresh.db"
    Journal(fresh).close()
    assert schema_of(path) == schema_of(fresh)

"""The journal stays fast however long it runs: opening it runs the full integrity check
only after an unclean close, every query a tick makes uses an index, and `prune` removes
archived finished runs — never an active run nor one a failback still needs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.journal import Journal, JournalError
from controller.model import Phase, StepStatus
from tests.unit.test_engine import ROOT, World, make_plan

# --- opening -------------------------------------------------------------------------------


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The journals on which the full integrity check ran, in order."""
    ran: list[Path] = []
    real = Journal._quick_check

    def counted(self: Journal) -> None:
        ran.append(self.path)
        real(self)

    monkeypatch.setattr(Journal, "_quick_check", counted)
    return ran


def crash_while_open(path: Path) -> None:
    """Another process opens the journal, writes and dies without closing it."""
    code = ("import os, sys; from controller.journal import Journal; "
            "j = Journal(sys.argv[1]); j.audit(at=1.0, actor='x', action='write'); "
            "os._exit(9)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr


def test_a_cleanly_closed_journal_opens_without_the_full_check(tmp_path: Path,
                                                               checks: list[Path]) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()  # new: nothing to check
    Journal(path).close()
    assert checks == []


def test_a_journal_left_open_by_a_crash_is_checked_once_on_the_next_open(
        tmp_path: Path, checks: list[Path]) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    crash_while_open(path)
    journal = Journal(path)
    assert checks == [path]
    assert [a["action"] for a in journal.audit_trail()] == ["write"]  # the commit survived
    journal.close()
    Journal(path).close()
    assert checks == [path]  # closed cleanly since


def test_a_second_process_opening_a_journal_in_use_neither_checks_nor_writes(
        tmp_path: Path, checks: list[Path]) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    crash_while_open(path)  # even with an unclean close on record ...
    first = Journal(path)  # ... the first opener checks,
    before = first._db.total_changes
    wal = (tmp_path / "j.db-wal").stat().st_size
    second = Journal(path)  # a second one (the CLI while the controller runs) does not
    assert checks == [path]
    assert (tmp_path / "j.db-wal").stat().st_size == wal and first._db.total_changes == before
    second.close()  # not the last: the next first opener must still know first is open
    first.close()
    Journal(path).close()
    assert checks == [path]


def test_a_damaged_journal_is_reported_with_what_to_do(tmp_path: Path,
                                                       checks: list[Path]) -> None:
    path = tmp_path / "j.db"
    journal = Journal(path)
    for i in range(2000):
        journal.audit(at=float(i), actor="controller", action="note", detail="x" * 200)
    journal.close()
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # garbage over pages in the middle of the audit table
        fh.seek(size // 2 // 4096 * 4096)
        fh.write(os.urandom(4096 * 4))
    journal = Journal(path)  # closed cleanly: opens at once, without the full check
    assert checks == []
    with pytest.raises(JournalError, match=r"is damaged .*move the file aside"):
        journal.audit_trail()
    with pytest.raises(JournalError, match="is damaged"):
        journal.check()
    journal._db.close()
    journal._release_open()  # as a crash would leave it: the next open checks, refuses
    with pytest.raises(JournalError, match=r"cannot be used .*left untouched"):
        Journal(path)


# --- every query a tick makes is indexed ---------------------------------------------------

BIG_TABLES = ("audit", "decisions", "requests", "runs", "steps", "approvals")


def test_every_query_of_a_tick_uses_an_index(journal: Journal) -> None:
    """A full scan of a table that grows with history would make each tick slower the
    longer the controller runs (the audit trail was scanned on every tick of a run)."""
    world = World(make_plan(lambda s: s.update(mode="manual")), journal)
    seen: list[str] = []
    journal._db.set_trace_callback(seen.append)
    world.tick(True)  # a quiet tick
    assert world.outage().phase is Phase.AWAITING_APPROVAL  # a run waiting for a person
    world.tick(False)
    world.engine.request("failover", actor="oncall", reason="drill")  # a pending request
    world.engine.approve(world.run().id, actor="oncall")
    world.tick(False)  # the run goes on and finishes
    restarted = World(world.plan, journal)  # a restart replays what was not yet sent
    restarted.tick(True)
    journal._db.set_trace_callback(None)
    assert journal.steps(world.run().id)[-1].status is StepStatus.SUCCEEDED
    reads = {s for s in seen if s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE"))}
    scans = {}
    for sql in reads:
        plan = [r[3] for r in journal._db.execute(f"EXPLAIN QUERY PLAN {sql}")]
        bad = [p for p in plan if p.startswith("SCAN") and p.split()[1] in BIG_TABLES]
        if bad:
            scans[sql[:120]] = bad
    assert len(reads) > 10 and scans == {}


# --- pruning -------------------------------------------------------------------------------

DAY = 86_400.0


def finished_incident(world: World) -> tuple[str, str]:
    """A failover and the failback that completed it; their run ids."""
    assert world.outage().phase is Phase.FAILED_OVER
    failover = world.run().id
    world.engine.request("failback", actor="oncall", reason="dc-a is back")
    for _ in range(10):
        world.tick(True)
    back = world.run()
    assert back.kind == "failback" and back.phase is Phase.HEALTHY
    return failover, back.id


def rows(journal: Journal, table: str, run_id: str) -> int:
    return int(journal._all(f"SELECT COUNT(*) FROM {table} WHERE run_id=?", (run_id,))[0][0])


def test_prune_removes_archived_runs_with_their_rows_and_keeps_the_rest(
        journal: Journal) -> None:
    world = World(make_plan(), journal)
    old = finished_incident(world)
    world.clock.advance(40 * DAY)
    recent = finished_incident(world)
    assert sum(rows(journal, "audit", r) for r in old) > 0
    assert sum(rows(journal, "requests", r) for r in old) == 1
    for run_id in old:
        journal.mark_archived(run_id, at=world.clock.now())
    decisions = len(journal.decisions("memory-drill", limit=10_000))

    pruned = journal.prune(before=world.clock.now() - 30 * DAY)

    assert sorted(pruned.runs) == sorted(old) and pruned.unarchived == []
    assert [r.id for r in journal.runs("memory-drill")] == [recent[1], recent[0]]
    for run_id in old:
        assert journal.run(run_id) is None
        assert all(rows(journal, t, run_id) == 0
                   for t in ("steps", "approvals", "audit", "requests"))
    assert pruned.decisions > 0  # those from before the oldest run still kept
    left = journal.decisions("memory-drill", limit=10_000)
    assert len(left) == decisions - pruned.decisions
    assert min(d["at"] for d in left) >= journal.run(recent[0]).detected_at  # type: ignore[union-attr]
    # the controller goes on as before
    world.tick(True)
    assert world.engine.state().phase is Phase.HEALTHY


def test_prune_keeps_unarchived_runs_unless_forced(journal: Journal) -> None:
    world = World(make_plan(), journal)
    old = finished_incident(world)
    world.engine.request("failover", actor="oncall", reason="drill")  # a run-less audit row
    world.clock.advance(40 * DAY)
    finished_incident(world)
    before = world.clock.now() - 30 * DAY
    pruned = journal.prune(before=before)
    assert pruned.runs == [] and sorted(pruned.unarchived) == sorted(old)
    assert all(journal.run(r) is not None for r in old)
    forced = journal.prune(before=before, force=True)
    assert sorted(forced.runs) == sorted(old) and forced.audit >= 1
    assert not [a for a in journal.audit_trail(plan="memory-drill")
                if a["run_id"] is None and a["at"] < before]


def test_prune_never_removes_an_open_incident_even_when_forced(journal: Journal) -> None:
    """A failback reverts every failover since the last completed failback from those
    runs' evidence; an active run is the controller's current work."""
    world = World(make_plan(lambda s: s.update(mode="manual")), journal)
    world.tick(True)
    world.engine.request("failover", actor="oncall", reason="first try")
    world.engine.reconcile()
    world.engine.approve(world.run().id, actor="second-oncall")
    world.engine.reconcile()
    failed_over = world.run()
    assert failed_over.phase is Phase.FAILED_OVER
    world.clock.advance(400 * DAY)  # stays on dc-b for over a year
    active = journal.start_run(plan="memory-drill", kind="failback", phase=Phase.FAILING_BACK,
                               level=None, reason="a failback under way", requested_by="oncall",
                               detected_at=world.clock.now(), now=world.clock.now(), steps=[],
                               approved=True)

    pruned = journal.prune(before=world.clock.now(), force=True)

    assert pruned.runs == [] and pruned.unarchived == []
    assert {r.id for r in journal.runs("memory-drill")} == {failed_over.id, active.id}
    with pytest.raises(ValueError, match="has not finished"):
        journal.mark_archived(active.id, at=world.clock.now())


def test_prune_in_batches_never_holds_the_write_lock_for_long(journal: Journal) -> None:
    for i in range(1200):
        journal.record_decision("p", _decision(float(i)))
    pruned = journal.prune(before=1000.0, batch=100)
    assert pruned.decisions == 1000
    assert [d["at"] for d in journal.decisions("p", limit=1000)] == [float(i) for i in
                                                                      range(1000, 1200)]


def _decision(at: float) -> Any:
    from controller.model import Decision, DecisionState

    return Decision(DecisionState.HEALTHY, None, f"healthy: tick {at}", at)


def test_a_migrated_journal_has_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    Journal(path).close()
    names = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"audit_run", "audit_plan", "decisions_plan", "requests_plan", "runs_open"} <= names

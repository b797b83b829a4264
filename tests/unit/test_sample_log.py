"""Recorded incidents become traces: the engine records the samples it decided on during
an incident (never while quiet), bounded; `failoverctl trace export RUN` writes the run's
window as a trace that replays to the same trip and level."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import controller.cli.traces  # noqa: F401  (registers `trace export` on main)
from controller import sample_log, testing
from controller.cli.base import main
from controller.journal import Journal
from controller.model import Phase, Sample
from controller.probes.trace import load
from controller.simulate import replay
from tests.unit.test_engine import ROOT, World, make_plan


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


def test_a_quiet_plan_records_nothing(journal: Journal) -> None:
    w = World(make_plan(), journal)
    for _ in range(50):
        assert w.tick(True).phase is Phase.HEALTHY
    assert rows(journal.path) == 0


def test_an_exported_incident_replays_to_the_same_trip_and_level(journal: Journal,
                                                                  tmp_path: Path) -> None:
    w = World(make_plan(), journal)
    for _ in range(40):  # 8 s of health: more than the window before the incident
        w.tick(True)
    testing.set_health("dc-a", False)
    state = None
    for _ in range(10):  # web and hotline down, api up: level 2, then all down: level 1
        w.clock.advance(0.2)
        now = w.clock.now()
        state = w.engine.tick([Sample("web", False, now), Sample("api", True, now),
                               Sample("hotline", False, now)])
    assert state is not None and state.phase is Phase.FAILED_OVER
    for _ in range(10):
        w.tick(False)
    run = w.run()
    assert run.level == 2  # the run finished before the level could rise

    trace = sample_log.export(journal, run, w.plan)
    assert trace.samples[0].at <= run.detected_at - w.plan.spec.trigger.window
    assert trace.expect is not None and trace.expect.level == 2
    result = replay(w.plan, trace)
    assert result.problems == [], result.to_json()["decisions"]
    assert -1.0 <= result.trips[0][0] - (run.started_at - trace.start) <= 2.0
    fine = replay(w.plan, trace, every=0.2)  # at the engine's own tick: the same instant
    assert abs(fine.trips[0][0] - (run.started_at - trace.start)) < 0.21

    out = tmp_path / "incident.jsonl"
    done = CliRunner().invoke(main, ["--journal", str(journal.path), "trace", "export",
                                     run.id, "--plan", str(ROOT / "manifests/examples/"
                                                            "memory-drill.yaml"),
                                     "--to", str(out)])
    assert done.exit_code == 0, done.output
    again = replay(w.plan, load(out))
    assert again.problems == []  # the file keeps times to the microsecond
    assert [(round(t, 3), lvl) for t, lvl in again.trips] == [
        (round(t, 3), lvl) for t, lvl in result.trips]


def test_the_record_is_bounded(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sample_log, "KEEP", 10)
    log = sample_log.SampleLog(journal, "p")
    log.write([Sample("web", False, float(t), detail="HTTP 503") for t in range(25)])
    kept = sample_log.recorded(journal, "p", 0, 100)
    assert [s.at for s in kept] == [float(t) for t in range(15, 25)]
    log.write(kept)  # written again (a restarted controller): still one row each
    assert rows(journal.path) == 10


def test_a_run_with_nothing_recorded_says_why(journal: Journal) -> None:
    plan = make_plan()
    run = journal.start_run(plan=plan.name, kind="failover", level=1, phase=Phase.FAILING_OVER,
                            reason="drill", requested_by="oncall", detected_at=100.0,
                            now=100.0, steps=[], approved=True)
    with pytest.raises(sample_log.NothingRecorded, match="no samples recorded"):
        sample_log.export(journal, run, plan)


def test_an_incident_is_written_with_its_news_and_every_flush_not_every_cycle(
        journal: Journal) -> None:
    plan, log = make_plan(), sample_log.SampleLog(journal, "p")

    def cycle(t: float, *, incident: bool, news: bool = False) -> None:
        log.add(plan, [Sample("web", not incident, t)], t, incident=incident, news=news)

    for t in range(5):  # healthy: held in memory only
        cycle(float(t), incident=False)
    assert rows(journal.path) == 0
    cycle(5.0, incident=True, news=True)  # degraded: the ring before it, and it
    assert rows(journal.path) == 6
    for t in range(6, 15):  # degraded, nothing new: held until FLUSH seconds passed
        cycle(float(t), incident=True)
    assert rows(journal.path) == 6
    cycle(15.0, incident=True)
    assert rows(journal.path) == 16
    cycle(16.0, incident=False, news=True)  # cleared: the tail is written too
    assert rows(journal.path) == 17

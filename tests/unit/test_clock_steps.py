"""Issue 21 item 10: the policy measures durations, not the wall clock. A clock set back
an hour must not hide an outage that has lasted ten minutes, and a clock set forward two
hours must not skip the dwell (both reproduced on the code before: "trip if it lasts 30 s
(now -2996 s)" and a trip at once)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from controller.backends import Backends
from controller.clock import Clock
from controller.journal import Journal
from controller.loop import Engine
from controller.model import Phase, Sample
from controller.plan import parse_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
SERVICES = ("web", "api", "hotline")


class SteppedClock:
    """A steady (monotonic) clock, and a wall clock that someone can set."""

    def __init__(self) -> None:
        self.mono, self.offset = 1000.0, 1_700_000_000.0

    def now(self) -> float:
        return self.mono + self.offset

    def monotonic(self) -> float:
        return self.mono


def world(tmp_path: Path, dwell: str) -> tuple[Engine, SteppedClock, Journal]:
    data: dict[str, Any] = copy.deepcopy(BASE)
    data["spec"]["trigger"].update(dwell=dwell, window="20m", cooldown="1s")
    data["spec"]["mode"] = "manual"  # a trip starts a run that waits: nothing else moves
    plan = parse_plan(data)
    clock = SteppedClock()
    journal = Journal(tmp_path / "journal.db")
    engine = Engine(plan, journal, backends=Backends(plan), holder="t",
                    clock=Clock(now=clock.now, monotonic=clock.monotonic, sleep=lambda s: None))
    return engine, clock, journal


def tick(engine: Engine, clock: SteppedClock, ok: bool, seconds: float = 5.0) -> Phase:
    clock.mono += seconds
    return engine.tick([Sample(s, ok, clock.now(), detail="" if ok else "HTTP 503")
                        for s in SERVICES]).phase


def test_a_clock_set_back_an_hour_does_not_hide_a_long_outage(tmp_path: Path) -> None:
    engine, clock, journal = world(tmp_path, dwell="30m")
    for _ in range(120):  # 10 minutes of a total outage, under the 30-minute dwell
        assert tick(engine, clock, ok=False) is not Phase.AWAITING_APPROVAL
    clock.offset -= 3600  # someone sets the clock back an hour
    tick(engine, clock, ok=False)
    sentence = engine.state().last_decision or ""
    assert "for 600.0 s" in sentence and "trips if it lasts 1800 s (now 600.0 s)" in sentence
    ticks = 0
    while tick(engine, clock, ok=False) is not Phase.AWAITING_APPROVAL:
        ticks += 1
        assert ticks < 500, engine.state().last_decision
    assert ticks + 1 == 240  # tripped exactly 30 minutes after the outage began
    run = journal.runs(engine.plan.name, limit=1)[0]
    assert run.started_at - run.detected_at == 1800
    assert [a["detail"] for a in journal.audit_trail(plan=engine.plan.name)
            if a["action"] == "clock-step"] == ["wall clock jumped -3600.0 s"]


def test_a_clock_set_forward_does_not_skip_the_dwell(tmp_path: Path) -> None:
    engine, clock, journal = world(tmp_path, dwell="10m")
    for _ in range(12):  # one minute of an outage
        tick(engine, clock, ok=False)
    clock.offset += 7200  # the clock jumps two hours ahead
    assert tick(engine, clock, ok=False) is not Phase.AWAITING_APPROVAL
    assert journal.runs(engine.plan.name) == []  # no trip: 60 s, not two hours
    sentence = engine.state().last_decision or ""
    assert "(now 60.0 s)" in sentence, sentence

"""A flapping primary must not cause a failover storm: cooldown and hysteresis hold."""

from __future__ import annotations

import copy
import itertools
import math
import random

from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase, Sample
from controller.plan import parse_plan
from controller.testing import FakeClock
from tests.reliability.conftest import TALLY
from tests.unit.test_engine import BASE


def test_flapping_primary_fails_over_at_most_once_per_cooldown(tmp_path) -> None:
    data = copy.deepcopy(BASE)
    data["spec"]["trigger"].update(cooldown="10m", dwell="2s", window="30s")
    data["spec"]["automaticFailback"] = True  # the worst case: it could bounce back and forth
    plan = parse_plan(data)
    clock = FakeClock()
    journal = Journal(tmp_path / "j.db")
    engine = Engine(plan, journal, clock=Clock(now=clock.now, sleep=clock.sleep), holder="x",
                    lease_ttl=1e9)
    rng = random.Random(7)
    hours = 3
    for i in range(hours * 3600):
        clock.advance(1)
        # bursts: down for 5-20 s, up for 5-40 s, forever
        phase = (i // 25) % 2 == 0
        ok = phase if rng.random() > 0.2 else not phase
        engine.tick([Sample(s, ok, clock.now()) for s in ("web", "api", "hotline")])
    runs = [r for r in journal.runs(plan.name, limit=1000) if r.kind == "failover"]
    TALLY["fault_tried"] += 1
    assert 1 <= len(runs) <= math.ceil(hours * 3600 / 600)
    starts = sorted(r.started_at for r in runs)
    assert all(b - a >= 600 for a, b in itertools.pairwise(starts))
    assert engine.state().phase is not Phase.FAILED
    TALLY["fault_survived"] += 1

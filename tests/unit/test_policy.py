"""The pure policy: trip, hold, clear and level decisions from samples and an injected clock."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from controller.model import DecisionAction, DecisionState, Sample
from controller.plan import FailoverPlan, parse_plan
from controller.policy import PolicyState, evaluate, start_cooldown

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
T0 = 1_000_000.0


def make_plan(**trigger: Any) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    data["spec"]["trigger"].update({"dwell": "2s", "window": "60s", **trigger})
    data["spec"]["signals"] = [{"name": "complaints", "baseline": 100, "surge": 50,
                                "probe": {"kind": "memory"}}]
    return parse_plan(data)


def feed(plan: FailoverPlan, rounds: list[dict[str, bool]], *, start: float = T0,
         step: float = 1.0, state: PolicyState | None = None):
    state = state or PolicyState()
    decisions = []
    for i, health in enumerate(rounds):
        now = start + i * step
        samples = [Sample(svc, ok, now, detail="" if ok else "HTTP 503")
                   for svc, ok in health.items()]
        decision, state = evaluate(plan, state, samples, now)
        decisions.append(decision)
    return decisions, state


ALL_DOWN = {"web": False, "api": False, "hotline": False}
ALL_UP = {"web": True, "api": True, "hotline": True}


def test_outage_trips_after_threshold_and_dwell_at_level_1() -> None:
    plan = make_plan()
    decisions, state = feed(plan, [ALL_UP] * 3 + [ALL_DOWN] * 6)
    actions = [d.action for d in decisions]
    assert actions[:3] == ["none"] * 3
    first_trip = actions.index("trip")
    # web+api are core: availability falls below 70 % at sample 4 (2 of 5 ok),
    # and the 2 s dwell makes the trip at sample 6
    assert first_trip == 6
    trip = decisions[first_trip]
    assert trip.level == 1
    assert "api down: 4 failed probes in a row (threshold 3) for 3.0 s (HTTP 503)" in trip.sentence
    assert "availability 0 % < 70 %" in trip.sentence
    assert state.detected_at == T0 + 4  # the plan's clock starts when the floor was crossed


def test_flapping_above_the_floor_never_trips() -> None:
    plan = make_plan()
    rounds = [{"web": i % 4 != 0, "api": True, "hotline": i % 2 == 0} for i in range(40)]
    decisions, _ = feed(plan, rounds)
    assert all(d.action == "none" for d in decisions)


def test_one_core_service_down_is_level_2_when_half_unavailable() -> None:
    plan = make_plan()
    rounds = [{"web": False, "api": True, "hotline": False}] * 8
    decisions, _state = feed(plan, rounds)
    trip = next(d for d in decisions if d.action == "trip")
    assert trip.level == 2  # 2 of 3 services down = 67 % unavailable


def test_level_rises_but_never_drops_while_tripped() -> None:
    plan = make_plan()
    rounds = [{"web": False, "api": True, "hotline": False}] * 8 + [ALL_DOWN] * 5 + \
        [{"web": False, "api": True, "hotline": True}] * 5
    decisions, _state = feed(plan, rounds)
    levels = [d.level for d in decisions if d.level is not None]
    assert levels[0] == 2
    assert 1 in levels
    assert levels[-1] == 1


def test_clear_after_consecutive_successes() -> None:
    plan = make_plan(window="3s", clearAfter=3)
    decisions, state = feed(plan, [ALL_DOWN] * 6 + [ALL_UP] * 8)
    actions = [d.action for d in decisions]
    assert "trip" in actions and "clear" in actions
    assert actions.index("clear") > actions.index("trip")
    assert not state.tripped


def test_complaint_surge_trips_on_its_own() -> None:
    plan = make_plan()
    state = PolicyState()
    for i in range(4):
        now = T0 + i
        samples = [Sample(s, True, now) for s in ALL_UP] + [
            Sample("complaints", True, now, value=160.0)]
        decision, state = evaluate(plan, state, samples, now)
        if decision.action == "trip":
            break
    assert decision.action == "trip"
    assert now == T0 + 2
    assert "complaints 60 % above baseline" in decision.sentence
    assert decision.level == 2


def test_surge_below_50_percent_does_not_trip() -> None:
    plan = make_plan()
    state = PolicyState()
    for i in range(10):
        now = T0 + i
        samples = [Sample("complaints", True, now, value=149.0)]
        decision, state = evaluate(plan, state, samples, now)
    assert decision.action == "none"


def test_cooldown_holds_a_second_automatic_failover() -> None:
    plan = make_plan(cooldown="10m", window="3s")
    _, state = feed(plan, [ALL_DOWN] * 6)
    state = start_cooldown(state, plan, T0 + 6)
    _, state = feed(plan, [ALL_UP] * 8, start=T0 + 6, state=state)
    decisions, state = feed(plan, [ALL_DOWN] * 6, start=T0 + 20, state=state)
    assert decisions[-1].action == "hold"
    assert "cooldown" in decisions[-1].sentence
    later, _ = feed(plan, [ALL_DOWN] * 2, start=T0 + 700, state=state)
    assert later[0].action == "trip"


def test_evaluate_is_pure() -> None:
    plan = make_plan()
    state = PolicyState()
    before = state.to_json()
    evaluate(plan, state, [Sample("web", False, T0)], T0)
    assert state.to_json() == before
    assert PolicyState.from_json(before).to_json() == before


def test_each_decision_says_its_state_as_data_and_only_a_change_of_state_is_news() -> None:
    """The engine, `simulate` and the drill read a decision's state, never its sentence:
    healthy, degraded, tripped, still-tripped, cleared, then held by the cooldown."""
    plan = make_plan(cooldown="10m", window="3s")
    decisions, state = feed(plan, [ALL_UP] * 2 + [ALL_DOWN] * 7 + [ALL_UP] * 4)
    seen = [(d.state, d.action, d.changed) for d in decisions]
    H, D, T, S, C = (DecisionState.HEALTHY, DecisionState.DEGRADED, DecisionState.TRIPPED,
                     DecisionState.STILL_TRIPPED, DecisionState.CLEARED)
    none, trip, clear = DecisionAction.NONE, DecisionAction.TRIP, DecisionAction.CLEAR
    assert seen == [(H, none, True), (H, none, False), (D, none, True), (D, none, False),
                    (T, trip, True), (S, none, True)] + [(S, none, False)] * 5 + [
                    (C, clear, True), (H, none, True)]
    state = start_cooldown(state, plan, T0 + 13)
    held, state = feed(plan, [ALL_DOWN] * 6, start=T0 + 20, state=state)
    assert (held[-1].state, held[-1].action) == (DecisionState.HELD, DecisionAction.HOLD)
    # the state of the last decision survives the journal (it decides what is news)
    assert PolicyState.from_json(state.to_json()).decided is DecisionState.HELD

"""The pure policy: trip, hold, clear and level decisions from samples and an injected clock."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from controller import policy
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


def test_the_status_view_keeps_the_trip_and_what_the_window_measured() -> None:
    """What a replica reads back from the status (`observed` -> `from_observed`) is the
    state but for the samples: a trip in progress goes on `still tripped` (neither
    forgotten nor tripped again), its level and detection time are kept, a service down
    stays down, and each service's window comes back as its count of passed and failed
    probes."""
    plan = make_plan(window="30s")
    _, state = feed(plan, [ALL_UP] * 3 + [ALL_DOWN] * 8)
    assert state.tripped and state.decided is DecisionState.STILL_TRIPPED
    seen = state.observed(plan, T0 + 10)
    assert seen["servicesDown"] == ["api", "hotline", "web"] and seen["availability"] == 0
    assert seen["services"]["web"] == {
        "available": False, "availability": 27.3, "probes": 11,
        "consecutiveFailures": 8, "consecutiveSuccesses": 0,
        "failingSince": "1970-01-12T13:46:43.000Z"}
    back = PolicyState.from_observed(seen, T0 + 10)
    assert back.services["web"].history == [(T0 + 10, True)] * 3 + [(T0 + 10, False)] * 8
    kept = {k: v for k, v in state.to_json().items() if k != "services"}
    assert {k: v for k, v in back.to_json().items() if k != "services"} == kept
    decisions, _ = feed(plan, [ALL_DOWN] * 3, start=T0 + 11, state=back)
    assert [d.state for d in decisions] == [DecisionState.STILL_TRIPPED] * 3
    assert decisions[-1].level == 1 and "web down: 11 failed probes in a row" in (
        decisions[-1].sentence)


def test_the_status_view_keeps_the_cooldown_of_a_failover() -> None:
    plan = make_plan(cooldown="10m", window="3s")
    _, state = feed(plan, [ALL_DOWN] * 6)
    state = start_cooldown(state, plan, T0 + 6.25)
    _, state = feed(plan, [ALL_UP] * 8, start=T0 + 6, state=state)
    back = PolicyState.from_observed(state.observed(None, T0 + 14), T0 + 13)
    assert back.cooldown_until == T0 + 606.25
    held, _ = feed(plan, [ALL_DOWN] * 6, start=T0 + 20, state=back)
    assert held[-1].action == "hold"


def _trip_at(plan: FailoverPlan, cycle: tuple[bool, ...], outage: int,
             takeover: int | None = None) -> float | None:
    """When `plan` trips on its core services failing as `cycle` repeats from probe
    `outage` on (probes every 0.5 s), with a new leader taking over from the status view
    at probe `takeover`."""
    state = PolicyState()
    for i in range(outage + 240):
        now = T0 + i * 0.5
        if i == takeover:
            state = PolicyState.from_observed(state.observed(plan, now), now - 0.5)
        ok = i < outage or cycle[(i - outage) % len(cycle)]
        decision, state = evaluate(plan, state, [Sample("web", ok, now),
                                                 Sample("api", ok, now)], now)
        if decision.state is DecisionState.TRIPPED:
            return now
    return None


def test_a_new_leader_detects_an_outage_at_most_one_window_later_never_earlier() -> None:
    """Two probes of three failing (never three in a row: the availability trips it, not
    a service down). A leader change anywhere from before the outage to the trip costs
    at most one window of detection: the window the status summed up leaves together."""
    plan = make_plan(window="30s", dwell="2s")
    base = _trip_at(plan, (False, False, True), outage=100)
    assert base is not None
    for takeover in range(40, int((base - T0) / 0.5) + 1):
        later = _trip_at(plan, (False, False, True), 100, takeover)
        assert later is not None and base <= later <= base + 30.0, (takeover, later)


def test_a_new_leader_does_not_judge_a_service_by_its_first_probes() -> None:
    """One probe of four failing: 75 %, above the 70 % floor, so it never trips. A new
    leader that started from no samples would see 0 % after a failed first probe, and
    trip after the 1 s dwell; the window's count from the status keeps it at 75 %."""
    plan = make_plan(window="10s", dwell="1s")
    cycle = (False, True, True, True)
    assert _trip_at(plan, cycle, outage=40) is None
    for takeover in range(40, 100):
        assert _trip_at(plan, cycle, 40, takeover) is None, takeover


# --- grading as the emergency plans do (issue 18) -------------------------------------------

def graded_plan(signals: list[dict[str, Any]], levels: list[dict[str, Any]] | None = None
                ) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    data["spec"]["trigger"].update({"dwell": "2s", "window": "60s"})
    data["spec"]["signals"] = [{"probe": {"kind": "memory"}, **s} for s in signals]
    if levels is not None:
        data["spec"]["levels"] = levels
    return parse_plan(data)


def values(plan: FailoverPlan, series: list[dict[str, float]], *, start: float = T0,
           state: PolicyState | None = None):
    """Healthy probes and the given signal values, one round a second."""
    state = state or PolicyState()
    decisions = []
    for i, named in enumerate(series):
        now = start + i
        samples = [Sample(s, True, now) for s in ALL_UP] + [
            Sample(name, True, now, value=v) for name, v in named.items()]
        decision, state = evaluate(plan, state, samples, now)
        decisions.append(decision)
    return decisions, state


def test_a_partial_outage_is_graded_by_the_service_it_loses() -> None:
    """Both core channels fail 2 probes of 3, never 3 in a row: no service is down, yet
    67 % of the core service is lost; level 2 (50-80 % unavailable), not level 3."""
    plan = make_plan()
    rounds = [ALL_UP] * 60 + [{"web": i % 3 == 2, "api": i % 3 == 2, "hotline": True}
                              for i in range(90)]
    decisions, state = feed(plan, rounds)
    trip = next(d for d in decisions if d.action == "trip")
    assert trip.level == 3  # at the trip, the window holds ~30 s of it: ~35 % lost
    assert state.tripped and state.level == 2 and decisions[-1].level == 2
    assert "availability 34 % < 70 %" in decisions[-1].sentence
    assert not any("down:" in d.sentence for d in decisions)


def test_a_falling_signal_trips_below_its_baseline_and_names_the_level() -> None:
    plan = graded_plan([{"name": "traffic", "direction": "below", "baseline": 1000,
                         "drop": 80}],
                       [{"level": 1, "signals": ["traffic"]}, {"level": 3}])
    quiet, _ = values(plan, [{"traffic": 250.0}] * 10)  # down 75 %: not yet
    assert {d.action for d in quiet} == {"none"}
    decisions, _ = values(plan, [{"traffic": 150.0}] * 4)
    assert [d.action for d in decisions] == ["none", "none", "trip", "none"]
    assert decisions[2].level == 1
    assert "traffic 85 % below baseline 1000 (now 150)" in decisions[2].sentence


def test_a_grading_signal_raises_the_level_but_never_trips_alone() -> None:
    plan = graded_plan([{"name": "satisfaction", "direction": "below", "threshold": 3.5,
                         "trips": False}],
                       [{"level": 1, "signals": ["satisfaction"]}, {"level": 3}])
    alone, _ = values(plan, [{"satisfaction": 3.2}] * 10)
    assert {d.action for d in alone} == {"none"}
    assert "satisfaction 3.2 < 3.5" in alone[-1].sentence
    _, state = values(plan, [{"satisfaction": 3.2}])
    decisions, _ = feed(plan, [{"web": True, "api": False, "hotline": True}] * 8, start=T0 + 1,
                        state=state)
    trip = next(d for d in decisions if d.action == "trip")
    assert trip.level == 1  # one core channel down would be level 3


def test_a_rolling_baseline_follows_the_signal_but_not_its_surge() -> None:
    plan = graded_plan([{"name": "tickets", "rollingBaseline": "48s", "surge": 50}])
    first, state = values(plan, [{"tickets": 1000.0}] + [{"tickets": 200.0}] * 59)
    assert {d.action for d in first} == {"none"}  # no history yet: no average to exceed
    assert policy.baseline(plan.spec.signals[0], state, T0 + 59) == 200.0
    below, state = values(plan, [{"tickets": 290.0}] * 5, start=T0 + 60, state=state)
    assert {d.action for d in below} == {"none"}  # +45 %
    surge, state = values(plan, [{"tickets": 320.0}] * 6, start=T0 + 65, state=state)
    assert [d.action for d in surge].count("trip") == 1
    # the average of the last 48 s (200 x 42, 290 x 5): the surge itself stays out
    assert "tickets 53 % above rolling average 209.6 (now 320)" in surge[2].sentence
    assert policy.baseline(plan.spec.signals[0], state, T0 + 70) == (38 * 200 + 5 * 290) / 43
    assert len(state.rolling["tickets"]) <= policy.BUCKETS + 1


def test_a_queried_baseline_is_the_last_answer_of_its_probe() -> None:
    plan = graded_plan([{"name": "tickets", "baselineQuery": {"kind": "memory"},
                         "surge": 50}])
    unknown, _ = values(plan, [{"tickets": 500.0}] * 5)
    assert {d.action for d in unknown} == {"none"}  # no baseline answered yet
    calm, state = values(plan, [{"tickets:baseline": 400.0, "tickets": 500.0}] * 5)
    assert {d.action for d in calm} == {"none"}
    decisions, state = values(plan, [{"tickets:baseline": 300.0, "tickets": 500.0}] * 3,
                              start=T0 + 5, state=state)
    assert decisions[-1].action == "trip"
    assert "tickets 67 % above queried baseline 300 (now 500)" in decisions[-1].sentence


def test_baselines_survive_a_rearm_the_journal_and_a_clock_jump() -> None:
    plan = graded_plan([{"name": "tickets", "rollingBaseline": "48s"}])
    _, state = values(plan, [{"tickets": 200.0}] * 10)
    kept = policy.rearm(PolicyState.from_json(state.to_json()))
    assert kept.rolling == state.rolling and not kept.services
    moved = policy.shift(kept, 3600.0)
    assert moved.rolling["tickets"][0][0] == state.rolling["tickets"][0][0] + 3600.0
    assert policy.baseline(plan.spec.signals[0], moved, T0 + 3609) == 200.0

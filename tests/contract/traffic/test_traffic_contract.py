"""The TrafficBackend contract, run against the in-memory fake and a real HAProxy.

Every test runs twice (edge = memory | haproxy), so the fake cannot drift from the real
backend: per-site weights, shift and revert round trips that restore the exact original,
idempotent shifts and reverts, and clear permanent errors that change nothing; through
the real `Traffic` handler, a revert that restores only what the step set (any step of a
stepped shift included) and reports, never overwrites, a change made by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.model import PermanentError
from tests.contract.traffic.steps import TrafficStep

ORIGINAL = {"primary": 100, "backup": 0}  # where the `edge` fixture starts every test
CUTOVER = {"backup": 100, "primary": 0}
Edge = Any  # conftest.Edge: .kind and .backend


def test_current_reports_a_weight_per_site(edge: Edge) -> None:
    assert edge.backend.current() == ORIGINAL


def test_shift_then_revert_restores_the_exact_original(edge: Edge) -> None:
    before = edge.backend.current()
    evidence = edge.backend.shift(to="backup", weights=CUTOVER)
    assert edge.backend.current() == {"primary": 0, "backup": 100}
    assert evidence["before"] == before
    assert evidence["after"] == {"primary": 0, "backup": 100}
    assert evidence["to"] == "backup"
    back = edge.backend.revert(to=evidence["before"])
    assert edge.backend.current() == before == ORIGINAL
    assert back["before"] == {"primary": 0, "backup": 100}
    assert back["after"] == ORIGINAL


def test_a_split_round_trips_exactly(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights={"backup": 30, "primary": 70})
    split = edge.backend.current()
    assert split == {"primary": 70, "backup": 30}
    edge.backend.shift(to="backup", weights=CUTOVER)
    edge.backend.revert(to=split)
    assert edge.backend.current() == split
    edge.backend.revert(to=ORIGINAL)
    assert edge.backend.current() == ORIGINAL


def test_shift_is_idempotent(edge: Edge) -> None:
    first = edge.backend.shift(to="backup", weights=CUTOVER)
    again = edge.backend.shift(to="backup", weights=CUTOVER)
    assert again["before"] == again["after"] == first["after"]
    assert edge.backend.current() == {"primary": 0, "backup": 100}


def test_revert_is_idempotent(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights=CUTOVER)
    edge.backend.revert(to=ORIGINAL)
    again = edge.backend.revert(to=ORIGINAL)
    assert again["before"] == again["after"] == ORIGINAL
    assert edge.backend.current() == ORIGINAL


def test_shift_leaves_destinations_it_does_not_name(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights={"backup": 100})
    assert edge.backend.current() == {"primary": 100, "backup": 100}


def test_unknown_destination_is_a_clear_permanent_error_and_changes_nothing(
        edge: Edge) -> None:
    with pytest.raises(PermanentError, match=r"unknown destinations \['dc-z'\]; "
                                             r"have \['backup', 'primary'\]"):
        edge.backend.shift(to="dc-z", weights={"dc-z": 100, "primary": 0})
    with pytest.raises(PermanentError, match=r"unknown destinations \['dc-z'\]"):
        edge.backend.revert(to={"dc-z": 0, "primary": 100})
    assert edge.backend.current() == ORIGINAL


def test_a_target_given_no_weight_is_refused_and_changes_nothing(edge: Edge) -> None:
    with pytest.raises(PermanentError, match="give the target 'backup' no weight"):
        edge.backend.shift(to="backup", weights={"primary": 0})
    assert edge.backend.current() == ORIGINAL


# --- a step's revert compares before it writes (through the real Traffic handler) ---------


def over(edge: Edge, **params: Any) -> TrafficStep:
    return TrafficStep.over(edge.backend, primary="primary", backup="backup",
                            weights=CUTOVER, **params)


def test_snapshot_holds_the_weights(edge: Edge) -> None:
    assert edge.backend.snapshot()["weights"] == ORIGINAL


def test_a_step_revert_restores_the_original(edge: Edge) -> None:
    step = over(edge)
    evidence = step.perform(step.prepare())
    assert edge.backend.current() == CUTOVER
    back = step.revert(evidence)
    assert "left" not in back and back["after"] == ORIGINAL
    assert edge.backend.current() == ORIGINAL
    again = step.revert(evidence)  # idempotent: re-run after a crash writes nothing
    assert again["writes"] == 0 and "nothing to write" in again["note"]
    assert edge.backend.current() == ORIGINAL


def test_a_step_revert_reports_and_keeps_a_change_made_during_the_incident(
        edge: Edge) -> None:
    step = over(edge)
    evidence = step.perform(step.prepare())
    edge.backend.revert(to={"backup": 30})  # a person lowers the backup by hand
    back = step.revert(evidence)
    assert edge.backend.current() == {"primary": 0, "backup": 30}
    assert back["writes"] == 0
    assert back["left"] == [{"destination": "backup", "now": 30, "stepSet": 100,
                             "original": 0}]
    assert "left as it is, not reverted to {'primary': 100, 'backup': 0}" in back["note"]


def test_a_stepped_shift_stopped_half_way_is_reverted_from_before_alone(edge: Edge) -> None:
    step = over(edge, steps=[10, 50, 100], pause="1ms")
    prepared = step.prepare()
    edge.backend.shift(to="backup", weights={"backup": 50, "primary": 50})  # it got here
    back = step.revert(prepared)  # a failed or unknown step: no `after` recorded
    assert "left" not in back
    assert edge.backend.current() == ORIGINAL

"""The TrafficBackend contract, run against every backend and its fake.

Every test runs once per kind (edge = memory | haproxy | gateway | istio | smi: the fake,
a real HAProxy, and the mesh objects on a real kube-apiserver), so the fake cannot drift
from the real backends. What a user relies on, each seen by an observer outside the
backend (`edge.history()`): the target is enabled before the source is drained (no
moment without a site serving); shift and revert round trips restore the exact original;
shifts and reverts are idempotent and write nothing when already there; clear permanent
errors change nothing; a cancelled step writes nothing; and through the real `Traffic`
handler, a revert restores only what the step set (any step of a stepped shift included)
and reports, never overwrites, a change made by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller import fencing
from controller.model import PermanentError
from tests.contract.traffic.conftest import ORIGINAL, Edge
from tests.contract.traffic.steps import TrafficStep

CUTOVER = {"backup": 100, "primary": 0}


def test_current_reports_a_weight_per_site(edge: Edge) -> None:
    assert edge.backend.current() == ORIGINAL


def test_shift_enables_the_target_before_draining_the_source(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights=CUTOVER)
    assert edge.history() == [{"primary": 100, "backup": 100},  # backup on, primary serving
                              {"primary": 0, "backup": 100}]


def test_shift_then_revert_restores_the_exact_original(edge: Edge) -> None:
    before = edge.backend.current()
    evidence = edge.backend.shift(to="backup", weights=CUTOVER)
    assert edge.backend.current() == CUTOVER
    assert evidence["before"] == before
    assert evidence["after"] == CUTOVER
    assert evidence["to"] == "backup"
    back = edge.backend.revert(to=evidence["before"])
    assert edge.backend.current() == before == ORIGINAL
    assert back["before"] == CUTOVER
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


def test_shift_is_idempotent_and_writes_nothing_the_second_time(edge: Edge) -> None:
    first = edge.backend.shift(to="backup", weights=CUTOVER)
    writes = len(edge.history())
    again = edge.backend.shift(to="backup", weights=CUTOVER)
    assert again["before"] == again["after"] == first["after"] == CUTOVER
    assert edge.backend.current() == CUTOVER
    assert len(edge.history()) == writes


def test_revert_is_idempotent_and_writes_nothing_the_second_time(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights=CUTOVER)
    edge.backend.revert(to=ORIGINAL)
    writes = len(edge.history())
    again = edge.backend.revert(to=ORIGINAL)
    assert again["before"] == again["after"] == ORIGINAL
    assert edge.backend.current() == ORIGINAL
    assert len(edge.history()) == writes


def test_shift_leaves_destinations_it_does_not_name(edge: Edge) -> None:
    edge.backend.shift(to="backup", weights={"backup": 100})
    assert edge.backend.current() == {"primary": 100, "backup": 100}


def test_an_unknown_destination_is_a_permanent_error_naming_it_and_changes_nothing(
        edge: Edge) -> None:
    with pytest.raises(PermanentError, match="dc-z"):
        edge.backend.shift(to="dc-z", weights={"dc-z": 100, "primary": 0})
    with pytest.raises(PermanentError, match="dc-z"):
        edge.backend.revert(to={"dc-z": 0, "primary": 100})
    assert edge.backend.current() == ORIGINAL and edge.history() == []


def test_a_target_given_no_weight_is_refused_and_changes_nothing(edge: Edge) -> None:
    with pytest.raises(PermanentError, match="give the target 'backup' no weight"):
        edge.backend.shift(to="backup", weights={"primary": 0})
    assert edge.backend.current() == ORIGINAL and edge.history() == []


def test_a_cancelled_step_writes_nothing(edge: Edge) -> None:
    fence = fencing.Fence(5, "replica-1")
    fence.cancel("the step's timeout passed")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled):
        edge.backend.shift(to="backup", weights=CUTOVER)
    assert edge.backend.current() == ORIGINAL and edge.history() == []


def test_snapshot_holds_the_weights(edge: Edge) -> None:
    assert edge.backend.snapshot()["weights"] == ORIGINAL


# --- a step's revert compares before it writes (through the real Traffic handler) ---------


def over(edge: Edge, **params: Any) -> TrafficStep:
    return TrafficStep.over(edge.backend, primary="primary", backup="backup",
                            weights=CUTOVER, **params)


def test_a_step_revert_restores_the_original(edge: Edge) -> None:
    step = over(edge)
    evidence = step.perform(step.prepare())
    assert edge.backend.current() == CUTOVER
    back = step.revert(evidence)
    assert "left" not in back and back["after"] == ORIGINAL
    assert edge.backend.current() == ORIGINAL
    writes = len(edge.history())
    again = step.revert(evidence)  # idempotent: re-run after a crash writes nothing
    assert again["writes"] == 0 and "nothing to write" in again["note"]
    assert edge.backend.current() == ORIGINAL and len(edge.history()) == writes


def test_a_step_revert_reports_and_keeps_a_change_made_during_the_incident(
        edge: Edge) -> None:
    step = over(edge)
    evidence = step.perform(step.prepare())
    edge.backend.revert(to={"backup": 30})  # a person lowers the backup by hand
    writes = len(edge.history())
    back = step.revert(evidence)
    assert edge.backend.current() == {"primary": 0, "backup": 30}
    assert back["writes"] == 0 and len(edge.history()) == writes
    assert back["left"] == [{"destination": "backup", "now": 30, "stepSet": 100,
                             "original": 0}]
    assert "left as it is, not reverted to {'primary': 100, 'backup': 0}" in back["note"]


def test_a_stepped_shift_stopped_half_way_is_reverted_from_before_alone(edge: Edge) -> None:
    step = over(edge, steps=[10, 50, 100], pause="1ms")
    prepared = step.prepare()
    assert prepared["before"] == ORIGINAL and prepared["snapshot"]["weights"] == ORIGINAL
    edge.backend.shift(to="backup", weights={"backup": 50, "primary": 50})  # it got here
    back = step.revert(prepared)  # a failed or unknown step: no `after` recorded
    assert "left" not in back
    assert edge.backend.current() == ORIGINAL

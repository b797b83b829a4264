"""The operator's pure rules (issue 22), without an API server: when a status is worth a
write and an Event, how an invalid plan's phase is read back, which request annotations
are refused before they are claimed, and which watched changes ask for a reconcile. The
same behaviour on the real kube-apiserver: tests/e2e/test_operator_lifecycle.py."""

from __future__ import annotations

from typing import Any

import pytest

from controller import status
from controller.model import Phase
from controller.operator import A_LEVEL, A_REQUEST, _asks, request_problem


def st(decision: str, **more: Any) -> dict[str, Any]:
    return {"phase": "Degraded", "lastDecision": decision, "updatedAt": 1.0, **more}


def test_a_decision_whose_counters_moved_is_no_change_of_meaning() -> None:
    before = st("degraded: hotline down: 3 failed probes in a row for 0.6 s")
    after = st("degraded: hotline down: 9 failed probes in a row for 1.8 s",
               updatedAt=2.0, lastDecisionTime="2026-01-01T00:00:01Z")
    assert not status.changed(before, after)
    assert not [e for e in status.events(before, after) if e[1] == "Decision"]
    tripped = st("tripped: hotline down for 5.0 s; level 2")
    assert status.changed(before, tripped)
    assert ("Normal", "Decision", tripped["lastDecision"]) in status.events(before, tripped)


def test_an_invalid_plans_record_keeps_its_own_phase() -> None:
    written = {"phase": "Invalid", "planPhase": "FailedOver", "updatedAt": 5.0,
               "activeSite": "dc-b", "policyState": {}}
    state = status.plan_state(written, "shop")
    assert state is not None and state.phase is Phase.FAILED_OVER
    assert status.plan_state({"phase": "Invalid", "updatedAt": 5.0}, "shop") is None


@pytest.mark.parametrize(("notes", "annotation", "says"), [
    ({A_REQUEST: "failover", A_LEVEL: "0"}, A_LEVEL, "takes 1, 2, 3 or 4"),
    ({A_REQUEST: "failover", A_LEVEL: "9"}, A_LEVEL, "takes 1, 2, 3 or 4"),
    ({A_REQUEST: "failover", A_LEVEL: "²"}, A_LEVEL, "takes 1, 2, 3 or 4"),
    ({A_REQUEST: "failover", A_LEVEL: "-1"}, A_LEVEL, "takes 1, 2, 3 or 4"),
    ({A_REQUEST: "sideways"}, A_REQUEST, "takes failover or failback"),
])
def test_a_malformed_request_is_refused_before_it_is_claimed(
        notes: dict[str, str], annotation: str, says: str) -> None:
    problem = request_problem(notes)
    assert problem is not None and problem[0] == annotation and says in problem[2]


@pytest.mark.parametrize("notes", [{A_REQUEST: "failover"}, {A_REQUEST: " failback "},
                                   {A_REQUEST: "failover", A_LEVEL: "2"},
                                   {A_REQUEST: "failover", A_LEVEL: ""}])
def test_a_well_formed_request_passes(notes: dict[str, str]) -> None:
    assert request_problem(notes) is None


def test_only_a_change_that_asks_for_something_requeues_a_plan() -> None:
    meta: dict[str, Any] = {"uid": "u1", "generation": 1, "annotations": {},
                            "finalizers": ["f"], "resourceVersion": "7"}
    obj: dict[str, Any] = {"metadata": meta, "spec": {"a": 1}, "status": {"phase": "x"}}
    written = {**obj, "metadata": {**meta, "resourceVersion": "8"},
               "status": {"phase": "y"}}
    assert not _asks(obj, written)  # our own status write
    assert _asks(obj, {**obj, "metadata": {**meta, "annotations": {
        A_REQUEST: "failover"}}})
    assert _asks(obj, {**obj, "metadata": {**meta,
                                           "deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert _asks(obj, {**obj, "spec": {"a": 2}})
    assert _asks(None, obj)

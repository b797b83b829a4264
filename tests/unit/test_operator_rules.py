"""The operator's pure rules (issue 22), without an API server: when a status is worth a
write and an Event, how an invalid plan's phase is read back, which request annotations
are refused before they are claimed, and which watched changes ask for a reconcile. The
same behaviour on the real kube-apiserver: tests/e2e/test_operator_lifecycle.py."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from controller import kube as k8s
from controller import status
from controller.annotations import A_BY, A_LEVEL, A_REQUEST, request_problem
from controller.crd import GROUP, KIND, PLURAL, VERSION, crd
from controller.journal import Journal
from controller.model import Phase
from controller.operator import _asks
from controller.operator_requests import Changed, Requests
from controller.testing_kube import FakeKube


def st(decision: str, decided: str, **more: Any) -> dict[str, Any]:
    return {"phase": "Degraded", "lastDecision": decision, "updatedAt": 1.0,
            "policy": {"decided": decided, "samples": more.pop("samples", 1)}, **more}


def test_a_decision_whose_counters_moved_is_no_change_of_meaning() -> None:
    before = st("degraded: hotline down: 3 failed probes in a row for 0.6 s", "degraded")
    after = st("degraded: hotline down: 9 failed probes in a row for 1.8 s", "degraded",
               updatedAt=2.0, lastDecisionTime="2026-01-01T00:00:01Z", samples=9)
    assert not status.changed(before, after)
    assert not [e for e in status.events(before, after) if e[1] == "Decision"]
    # the meaning is the typed state, never the sentence's wording
    reworded = st("thresholds: hotline down", "degraded", updatedAt=3.0)
    assert not status.changed(before, reworded)
    tripped = st("tripped: hotline down for 5.0 s; level 2", "tripped")
    assert status.changed(before, tripped)
    assert ("Normal", "Decision", tripped["lastDecision"]) in status.events(before, tripped)


def test_an_invalid_plans_record_keeps_its_own_phase() -> None:
    written = {"phase": "Invalid", "planPhase": "FailedOver", "updatedAt": 5.0,
               "activeSite": "dc-b", "policy": {}}
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


def _conditions(journal: Journal, request: bool) -> dict[str, dict[str, Any]]:
    from tests.unit.test_engine import World, make_plan

    w = World(make_plan(), journal)
    w.tick(True)
    if request:
        w.engine.request("failover", actor="alice", reason="dc-a power work")
        w.engine.reconcile()
    else:
        w.outage()
    built = status.build(journal, w.plan.name, generation=1, previous={}, now=w.clock.now())
    return {c["type"]: c for c in built["conditions"]}


def test_a_requested_failover_says_requested_not_tripped(journal: Journal) -> None:
    conditions = _conditions(journal, request=True)
    assert conditions["Tripped"]["status"] == "False"
    assert conditions["Tripped"]["reason"] == "Requested"
    assert conditions["Requested"]["status"] == "True"
    assert conditions["Requested"]["message"] == "requested by alice: dc-a power work"


def test_a_threshold_trip_says_tripped_and_not_requested(journal: Journal) -> None:
    conditions = _conditions(journal, request=False)
    assert conditions["Tripped"] | {"lastTransitionTime": None} == {
        "type": "Tripped", "status": "True", "reason": "ThresholdExceeded",
        "message": "FailedOver", "lastTransitionTime": None}
    assert conditions["Requested"]["status"] == "False"


@pytest.mark.parametrize(("step", "says", "kind"), [
    ({"status": "running", "met": None, "sinceDetectionSeconds": 12.0}, "(target 600 s)",
     "Normal"),
    ({"status": "succeeded", "met": True, "sinceDetectionSeconds": 90.0},
     "(target 600 s, met)", "Normal"),
    ({"status": "succeeded", "met": False, "sinceDetectionSeconds": 700.0},
     "(target 600 s, MISSED)", "Warning"),
])
def test_a_step_event_says_missed_only_for_a_step_that_missed(
        step: dict[str, Any], says: str, kind: str) -> None:
    after = {"run": {"id": "r1", "steps": [{"name": "restore-db", "targetSeconds": 600,
                                            "attempts": 1, **step}]}}
    [(event_kind, _, message)] = [e for e in status.events({}, after) if e[1].startswith("Step")]
    assert says in message and event_kind == kind
    assert ("MISSED" in message) is (step["met"] is False)


def test_the_run_progress_says_how_far_it_got_for_get_wide() -> None:
    steps = [{"name": "notify", "status": "succeeded"}, {"name": "redirect", "status": "failed"},
             {"name": "dns-cutover", "status": "running"}, {"name": "verify",
                                                            "status": "pending"}]
    assert status.progress(steps) == "2/4 steps, dns-cutover running"
    assert status.progress([{"name": "a", "status": "succeeded"}]) == "1/1 steps"
    columns = {c["name"]: c for c in crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Progress"]["jsonPath"] == ".status.run.progress"
    assert columns["Decision"]["priority"] == 1  # -o wide only


class _Writer:
    """What a claim uses of the operator's StatusWriter: the API, unfenced."""

    namespace, journal = "failover-system", None

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.elector = SimpleNamespace(fence=lambda: None)

    def fenced(self, name: str, write: Callable[[Any], Any]) -> Any:
        return write(None)


def test_a_claim_from_an_old_view_claims_nothing_and_says_so_once() -> None:
    """The reconcile read the plan before its annotations changed (a newer request, or an
    earlier cycle's claim): nothing is claimed, and it is `Changed`, which the worker logs
    as news (no traceback), not a Conflict the update would re-read and re-apply 8 times
    to no avail."""
    verbs: list[str] = []
    kube = FakeKube(hop=verbs.append)
    newer = {A_REQUEST: "failback", A_BY: "bob"}
    kube.create(GROUP, VERSION, _Writer.namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": "shop", "annotations": newer}, "spec": {}})
    requests = Requests(_Writer(kube))  # type: ignore[arg-type]
    verbs.clear()
    with pytest.raises(Changed, match="changed since this cycle read them") as raised:
        requests.claim("shop", {A_REQUEST: "failover", A_BY: "alice"}, (A_REQUEST, A_BY))
    assert not isinstance(raised.value, k8s.Conflict)
    assert verbs == ["get"]  # one read, no write, no re-read
    stored = kube.get(GROUP, VERSION, _Writer.namespace, PLURAL, "shop")
    assert stored["metadata"]["annotations"] == newer
    requests.claim("shop", newer, (A_REQUEST, A_BY))  # as read now: claimed
    stored = kube.get(GROUP, VERSION, _Writer.namespace, PLURAL, "shop")
    assert not stored["metadata"].get("annotations")

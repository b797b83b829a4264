"""Stepped traffic shifts with the in-memory fakes: plan validation, the weights of each
step, the check between steps, the shift back on a failed check, and a retried shift
resuming where the traffic already is. (The real HAProxy version: tests/e2e.)"""

from __future__ import annotations

from typing import Any

import pytest

from controller import testing
from controller.backends import Backends
from controller.journal import Journal
from controller.model import PermanentError, Phase, StepStatus
from controller.plan import PlanError
from controller.steps import StepContext
from controller.steps.traffic import Traffic, _step_weights
from tests.unit.test_engine import World, make_plan

STEPPED = {"steps": [10, 50, 100], "pause": "1ms",
           "check": {"kind": "memory", "options": {"key": "dc-b"}}}


def stepped(**params: Any) -> Any:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"][1]["params"].update({**STEPPED, **params})
    return mutate


@pytest.mark.parametrize(("params", "problem"), [
    ({"steps": [50, 10, 100]}, "params.steps: [50, 10, 100] must rise and end at 100"),
    ({"steps": [10, 50]}, "params.steps: [10, 50] must rise and end at 100"),
    ({"steps": [10, 10, 100]}, "params.steps: [10, 10, 100] must rise and end at 100"),
    ({"steps": [0, 100]}, "params.steps: [0, 100] must list percentages from 1 to 100"),
    ({"steps": []}, "params.steps: [] must list percentages from 1 to 100"),
    ({"steps": None, "pause": "1s"}, "params.pause: only used by a stepped shift; add steps"),
    ({"steps": None, "check": {"kind": "memory"}}, "params.check: only used by a stepped "
                                                   "shift; add steps such as [10, 50, 100] "
                                                   "or remove check"),
    ({"pause": "soon"}, "params.pause: cannot read duration 'soon'"),
    ({"check": {"kind": "nope"}}, "spec.steps[1].params.check.kind: unknown probe kind "
                                  "'nope'; choose one of"),
    ({"check": {"kind": "http", "options": {}}},
     "spec.steps[1].params.check.options.url: required field is missing; add it"),
])
def test_stepped_params_are_validated_with_the_field_and_the_fix(params: dict[str, Any],
                                                                  problem: str) -> None:
    with pytest.raises(PlanError) as err:
        make_plan(stepped(**params))
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_step_weights_send_the_percentage_to_the_target() -> None:
    final = {"dc-b": 100, "dc-a": 0}
    original = {"dc-a": 100, "dc-b": 0}
    assert _step_weights(10, "dc-b", final, original) == {"dc-b": 10, "dc-a": 90}
    assert _step_weights(50, "dc-b", final, original) == {"dc-b": 50, "dc-a": 50}
    assert _step_weights(100, "dc-b", final, original) == final
    # the rest keeps the original proportions between the other destinations
    three = {"dc-c": 100, "dc-a": 0, "dc-b": 0}
    assert _step_weights(20, "dc-c", three, {"dc-a": 3, "dc-b": 1, "dc-c": 0}) == {
        "dc-c": 20, "dc-a": 60, "dc-b": 20}


def test_a_stepped_shift_goes_through_every_step_checking_the_backup(journal: Journal) -> None:
    w = World(make_plan(stepped()), journal)
    w.tick(True)
    assert w.outage().phase is Phase.FAILED_OVER
    rec = w.journal.step(w.run().id, "redirect-traffic")
    assert rec.status is StepStatus.SUCCEEDED
    assert [(s["percent"], s["weights"], s["check"]) for s in rec.evidence["steps"]] == [
        (10, {"dc-a": 90, "dc-b": 10}, "via dc-b"),
        (50, {"dc-a": 50, "dc-b": 50}, "via dc-b"),
        (100, {"dc-a": 0, "dc-b": 100}, "via dc-b")]
    assert rec.evidence["before"] == {"dc-a": 100, "dc-b": 0}
    assert w.backends.get("edge").current() == {"dc-a": 0, "dc-b": 100}


def test_a_failed_check_shifts_back_and_fails_the_step_with_the_reason(
        journal: Journal) -> None:
    testing.set_health("dc-b", False)
    w = World(make_plan(stepped()), journal)
    w.tick(True)
    assert w.outage().phase is Phase.FAILED
    rec = w.journal.step(w.run().id, "redirect-traffic")
    assert rec.error == ("step redirect-traffic: the memory check failed at 10% to dc-b: "
                         "dc-b: fault injected; traffic shifted back to "
                         "{'dc-a': 100, 'dc-b': 0}")
    assert rec.attempts == 1  # a failed check is permanent: not retried
    assert w.backends.get("edge").current() == {"dc-a": 100, "dc-b": 0}


def test_a_retried_stepped_shift_resumes_at_the_step_already_reached() -> None:
    plan = make_plan(stepped())
    backends = Backends(plan)
    edge = backends.get("edge")
    original = edge.current()
    edge.shift(to="dc-b", weights={"dc-b": 50, "dc-a": 50})  # the first attempt got here
    ctx = StepContext(plan=plan, run_id="r", level=1, backends=backends,
                      lookup_evidence=lambda run, step: {})
    step = plan.spec.steps[1]
    evidence = Traffic().apply(step, ctx, {"before": original})
    assert [s["percent"] for s in evidence["steps"]] == [50, 100]
    assert edge.current() == {"dc-a": 0, "dc-b": 100}


def test_instant_cutover_stays_the_default() -> None:
    plan = make_plan()
    backends = Backends(plan)
    ctx = StepContext(plan=plan, run_id="r", level=1, backends=backends,
                      lookup_evidence=lambda run, step: {})
    evidence = Traffic().apply(plan.spec.steps[1], ctx, {"before": {}})
    assert "steps" not in evidence
    assert evidence["before"] == {"dc-a": 100, "dc-b": 0}
    assert backends.get("edge").current() == {"dc-a": 0, "dc-b": 100}


def test_a_failed_shift_back_is_reported_too() -> None:
    plan = make_plan(stepped())
    backends = Backends(plan)
    testing.set_health("dc-b", False)
    ctx = StepContext(plan=plan, run_id="r", level=1, backends=backends,
                      lookup_evidence=lambda run, step: {})
    with pytest.raises(PermanentError, match=r"failed at 10% to dc-b: dc-b: fault injected; "
                                             r"shifting back to \{'nowhere': 1\} also failed: "
                                             r"unknown destinations \['nowhere'\]"):
        Traffic().apply(plan.spec.steps[1], ctx, {"before": {"nowhere": 1}})

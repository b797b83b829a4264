"""A new step kind is one definition: a toy kind written in this file alone goes through
plan validation (its typed params kept on the step, its own checks naming the field),
the preview (its `describe`), the dry run (its read-only `plan`) and the executor (its
`plan` journaled before `apply`, then its `revert`), with nothing else changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import console, registry
from controller.backends import Backends
from controller.executor import Executor
from controller.journal import Journal
from controller.model import Evidence, StepRecord, StepStatus
from controller.plan import FailoverPlan, PlanError, PlanSpec, Step, Strict, json_schema, parse_plan
from controller.steps import Change, StepContext, StepKind, step_kind

PLAN = yaml.safe_load((Path(__file__).parents[1] / "traces" / "plan.yaml").read_text())
LAMP: dict[str, str] = {}  # the toy kind's world: one lamp per room


class LampParams(Strict):
    room: str
    colour: str = "red"


class Lamp(StepKind[LampParams]):
    """Turns a room's lamp to a colour; revertible from the colour it found."""

    action = "lamp"
    Params = LampParams
    revertible = True

    def check(self, step: Step, spec: PlanSpec) -> None:
        if self.args(step).room == spec.sites.primary.name:
            raise ValueError("params.room: the primary site has no lamp; name another room")

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        p = self.args(step)
        return f"turn the lamp in {p.room} {p.colour}"

    def plan(self, step: Step, ctx: StepContext) -> Change:
        p = self.args(step)
        before = LAMP.get(p.room, "off")
        return Change({"before": before}, f"{p.room}: {before} -> {p.colour}")

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        p = self.args(step)
        LAMP[p.room] = p.colour
        return {"after": p.colour}

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        LAMP[self.args(step).room] = evidence["before"]
        return {"restored": evidence["before"]}


@pytest.fixture
def lamp() -> Iterator[None]:
    LAMP.clear()
    registry.register_step(Lamp())
    yield
    registry.unregister_step("lamp")


def plan_with(**step: Any) -> dict[str, Any]:
    data = copy.deepcopy(PLAN)
    data["spec"]["steps"] = [{"name": "light", "action": "lamp", "params": {"room": "hall"},
                              **step}]
    return data


def test_an_unregistered_action_is_refused_naming_the_choices() -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(plan_with())
    assert "steps[0] (light).action: unknown action 'lamp'; choose one of: dns, manual" \
        in str(err.value)


def test_the_plan_keeps_the_kinds_typed_params_and_runs_its_checks(lamp: None) -> None:
    plan = parse_plan(plan_with(onFailure="revert"))
    assert plan.spec.steps[0].args == LampParams(room="hall")
    assert "lamp" in json_schema()["$defs"]["Step"]["properties"]["action"]["enum"]
    with pytest.raises(PlanError) as err:
        parse_plan(plan_with(params={"room": "hall", "colour": 3}))
    assert "steps[0] (light).params.colour: Input should be a valid string" in str(err.value)
    with pytest.raises(PlanError) as err:
        parse_plan(plan_with(params={"room": "dc-a"}))
    assert "steps[0] (light).params.room: the primary site has no lamp" in str(err.value)


def test_the_preview_and_dry_run_say_what_the_kind_would_do(lamp: None) -> None:
    plan = parse_plan(plan_with())
    assert console.preview(plan)[0]["does"] == "turn the lamp in hall red"
    ctx = StepContext(plan=plan, run_id="dry", level=None, backends=Backends(plan),
                      lookup_evidence=lambda run, step: {})
    assert step_kind("lamp").plan(plan.spec.steps[0], ctx).summary == "hall: off -> red"
    assert LAMP == {}  # the dry run changed nothing


def test_the_executor_journals_the_plan_applies_and_reverts(lamp: None,
                                                             journal: Journal) -> None:
    plan = parse_plan(plan_with())
    LAMP["hall"] = "white"
    step = plan.spec.steps[0]
    ctx = StepContext(plan=plan, run_id="r1", level=1, backends=Backends(plan),
                      lookup_evidence=lambda run, name: {})
    executor = Executor(journal, guard=lambda: None, token=lambda: 1, holder="test")
    rec = executor.execute(step, StepRecord("r1", 0, step.name, step.action), ctx,
                           detected_at=0.0)
    assert rec.status is StepStatus.SUCCEEDED, rec.error
    assert LAMP == {"hall": "red"}
    assert rec.evidence["before"] == "white" and rec.evidence["after"] == "red"
    rec = executor.revert(step, rec, ctx)
    assert rec.status is StepStatus.REVERTED
    assert LAMP == {"hall": "white"}

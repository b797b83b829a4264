"""The plan schema: shipped examples validate; every broken plan names its field and fix."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from controller.plan import (
    PlanError,
    format_duration,
    json_schema,
    load_plan,
    parse_duration,
    parse_plan,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())


def broken(mutate: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    mutate(data)
    return data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_validate(path: Path) -> None:
    plan = load_plan(path)
    assert plan.spec.steps


def test_examples_encode_the_emergency_plan_targets() -> None:
    plan = load_plan(ROOT / "manifests/examples/memory-drill.yaml")
    targets = {s.name: s.target for s in plan.spec.steps}
    assert targets["redirect-traffic"] == 3600
    assert targets["dns-cutover"] == 7200
    assert targets["link-test"] == 7200
    assert plan.spec.trigger.availability_floor == 70
    levels = {r.level for r in plan.spec.levels}
    assert levels == {1, 2, 3}


def _set(path: list[Any], value: Any):
    def mutate(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return mutate


CASES = [
    ("unknown backend kind",
     _set(["spec", "backends", 0, "kind"], "nosuch"), "spec.backends[0].kind", "choose one of"),
    ("verify step names a missing service",
     _set(["spec", "steps", 3, "params"], {"services": ["fax"]}), "params.services", "fax"),
    ("negative duration", _set(["spec", "trigger", "dwell"], "-5s"), "spec.trigger.dwell",
     "negative"),
    ("threshold above 100 %", _set(["spec", "trigger", "availabilityFloor"], 120),
     "spec.trigger.availabilityFloor", "less than or equal to 100"),
    ("duplicate step names", _set(["spec", "steps", 1, "name"], "notify-incident"),
     "steps", "duplicate name 'notify-incident'"),
    ("wrong type", _set(["spec", "trigger", "consecutiveFailures"], "many"),
     "spec.trigger.consecutiveFailures", "integer"),
    ("unknown field", _set(["spec", "trigger", "dwel"], "5s"), "spec.trigger.dwel",
     "unknown field"),
    ("step uses a missing backend", _set(["spec", "steps", 1, "backend"], "edge2"),
     "backend", "no backend named 'edge2'"),
    ("step uses a backend of the wrong role", _set(["spec", "steps", 1, "backend"], "zone"),
     "backend", "needs a traffic backend"),
    ("unreadable duration", _set(["spec", "services", 0, "interval"], "often"),
     "spec.services[0].interval", "cannot read duration"),
    ("bad backend option", _set(["spec", "backends", 0, "options"], {"weight": 1}),
     "spec.backends[0].options.weight", "unknown field"),
    ("no core service", lambda d: [s.update(core=False) for s in d["spec"]["services"]],
     "services", "core: true"),
    ("dns record without values",
     _set(["spec", "steps", 2, "params", "records", 0, "values"], []),
     "params.records[0].values", "at least 1"),
    ("traffic params of the wrong type", _set(["spec", "steps", 1, "params"], {"weights": 5}),
     "params.weights", "valid dictionary"),
    ("human step that is not manual marked parallel", _set(["spec", "steps", 1, "parallel"], True),
     "parallel", "only manual"),
    ("quorum above the number of probes", _set(["spec", "services", 0, "quorum"], 3),
     "spec.services[0]", "quorum 3 is more than the 1 probes"),
    ("same site twice", _set(["spec", "sites", "backup", "name"], "dc-a"), "spec.sites",
     "different names"),
]


@pytest.mark.parametrize(("label", "mutate", "field", "hint"), CASES, ids=[c[0] for c in CASES])
def test_broken_plans_name_the_field(label: str, mutate: Any, field: str, hint: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(broken(mutate), "broken.yaml")
    text = "\n".join(info.value.problems)
    assert field in text, text
    assert hint in text, text


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="must be a mapping"):
        parse_plan(["a"], "x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(PlanError, match="not valid YAML at line"):
        load_plan(bad)
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), (5, 5), ("2d", 172800),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1x", "h1", "-1s", True, None, "1h 3"])
def test_bad_durations_are_rejected(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.integers(min_value=0, max_value=10**7))
def test_duration_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_json_schema_exports_the_camel_case_fields() -> None:
    schema = json_schema()
    text = json.dumps(schema)
    for name in ("availabilityFloor", "consecutiveFailures", "onFailure", "apiVersion"):
        assert name in text

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
    ("stepped shift longer than its timeout",
     _set(["spec", "steps", 1], {"name": "shift", "action": "traffic", "backend": "edge",
                                 "timeout": "1500ms", "onFailure": "revert",
                                 "params": {"steps": [10, 50, 100], "pause": "1s"}}),
     "steps[1] (shift).timeout", "cannot finish within its timeout of 1.5s"),
    # plans that validated field by field yet could not run (issue 21, item 20)
    ("more approvals required than approvers",
     _set(["spec", "approval"], {"required": 3, "approvers": ["alice", "bob", "bob"]}),
     "spec.approval", "required 3 is more than the 2 approvers listed (alice, bob, bob)"),
    ("zero probe interval", _set(["spec", "services", 0, "interval"], "0s"),
     "spec.services[0].interval", "must be more than 0"),
    ("zero probe timeout", _set(["spec", "services", 1, "timeout"], "0ms"),
     "spec.services[1].timeout", "use a positive duration"),
    ("zero signal interval",
     _set(["spec", "signals"], [{"name": "complaints", "baseline": 10, "interval": 0,
                                 "probe": {"kind": "memory", "options": {"key": "c"}}}]),
     "spec.signals[0].interval", "must be more than 0"),
    ("zero step timeout", _set(["spec", "steps", 3, "timeout"], "0m0s"),
     "spec.steps[3].timeout", "must be more than 0"),
    ("zero timeout in a probe's options",
     _set(["spec", "services", 2, "probes"], [{"kind": "http", "options": {
         "url": "http://127.0.0.1:8080/health", "timeout": "0s"}}]),
     "services[2].probes[0].options.timeout", "must be more than 0"),
    ("all traffic weights zero",
     _set(["spec", "steps", 1, "params"], {"to": "dc-b", "weights": {"dc-a": 0, "dc-b": 0}}),
     "steps[1] (redirect-traffic).params.weights", "sends the traffic nowhere"),
    ("negative traffic weight",
     _set(["spec", "steps", 1, "params"], {"weights": {"dc-a": -1, "dc-b": 100}}),
     "steps[1] (redirect-traffic).params.weights", "dc-a: below 0"),
    ("traffic weight for an unknown site",
     _set(["spec", "steps", 1, "params"], {"weights": {"dc-c/web1": 100, "dc-a": 0}}),
     "steps[1] (redirect-traffic).params.weights", "'dc-c/web1' is not a site of this plan"),
    ("traffic to an unknown site", _set(["spec", "steps", 1, "params"], {"to": "dc-c"}),
     "steps[1] (redirect-traffic).params.to", "use dc-a or dc-b"),
    ("signal named like a service",
     _set(["spec", "signals"], [{"name": "api", "baseline": 10,
                                 "probe": {"kind": "memory", "options": {"key": "c"}}}]),
     "signals[0].name", "'api' is also a service; "),
    # signals in either direction, rolling or queried baselines, level rules (issue 18)
    ("signal with no reference",
     _set(["spec", "signals"], [{"name": "complaints", "probe": {"kind": "memory"}}]),
     "spec.signals[0]", "give exactly one of baseline, rollingBaseline, baselineQuery or "
     "threshold (got none), e.g. baseline: 100"),
    ("signal with two references",
     _set(["spec", "signals"], [{"name": "complaints", "baseline": 100,
                                 "rollingBaseline": "24h", "probe": {"kind": "memory"}}]),
     "spec.signals[0]", "(got baseline, rollingBaseline)"),
    ("falling signal with no drop",
     _set(["spec", "signals"], [{"name": "traffic", "direction": "below", "baseline": 1000,
                                 "probe": {"kind": "memory"}}]),
     "spec.signals[0]", "drop: a signal compared below a baseline needs drop (%), e.g. "
     "drop: 80"),
    ("drop on a rising signal",
     _set(["spec", "signals"], [{"name": "complaints", "baseline": 100, "drop": 50,
                                 "probe": {"kind": "memory"}}]),
     "spec.signals[0]", "drop: only for direction: below with a baseline"),
    ("unknown direction",
     _set(["spec", "signals"], [{"name": "traffic", "direction": "down", "baseline": 1000,
                                 "drop": 80, "probe": {"kind": "memory"}}]),
     "spec.signals[0].direction", "'above' or 'below' (got 'down')"),
    ("baseline query of an unusable probe",
     _set(["spec", "signals"], [{"name": "tickets", "probe": {"kind": "memory"},
                                 "baselineQuery": {"kind": "prometheus",
                                                   "options": {"query": "avg(x[1d])"}}}]),
     "spec.signals[0].baselineQuery.options.url", "required field is missing"),
    ("level rule naming an unknown signal",
     _set(["spec", "levels"], [{"level": 1, "signals": ["satisfaction"]}]),
     "levels[0].signals", "no signal named 'satisfaction' in spec.signals (have: none)"),
    ("unknown escalation", _set(["spec", "escalation"], "down"),
     "spec.escalation", "'exact' or 'upward' (got 'down')"),
    ("unknown level target",
     _set(["spec", "steps", 0, "levelTarget"], "repair"),
     "spec.steps[0].levelTarget", "'respond' or 'fix' (got 'repair')"),
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
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"apiVersion: x\nmetadata:\n  name: caf\xe9\n")
    with pytest.raises(PlanError, match=r"not UTF-8 text \(byte 0xe9 on line 3\); save the"):
        load_plan(latin1)


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


def test_a_plan_of_before_keeps_its_meaning() -> None:
    """A fixed-baseline signal and no levels parse as before: rising, tripping, the
    plans' default levels (now also graded by the share lost) and exact escalation."""
    plan = parse_plan(broken(lambda d: d["spec"].update(signals=[
        {"name": "complaints", "baseline": 100, "surge": 50, "probe": {"kind": "memory"}}])))
    sig = plan.spec.signals[0]
    assert (sig.direction, sig.trips, sig.reference(100.0)) == ("above", True, 150.0)
    assert [(r.level, r.lost_over, r.fix_within) for r in plan.spec.levels] == [
        (1, 80, 4 * 3600), (2, 50, 8 * 3600), (3, None, 12 * 3600)]
    assert plan.spec.escalation == "exact"


def _routes(escalation: str) -> list[tuple[int, str]]:
    def mutate(data: dict[str, Any]) -> None:
        data["spec"]["escalation"] = escalation
        data["spec"]["notifications"] = [
            {"level": 1, "notifier": "mail", "recipients": ["all@example.com"]},
            {"level": 2, "notifier": "mail", "recipients": ["heads@example.com"]},
            {"level": 3, "notifier": "mail", "recipients": ["shift@example.com"]},
            {"level": 3, "notifier": "mail", "recipients": ["heads@example.com"]}]
    spec = parse_plan(broken(mutate)).spec
    return [(r.level, r.recipients[0]) for r in spec.reached(1)]


def test_upward_escalation_reaches_every_less_severe_route_once() -> None:
    assert _routes("exact") == [(1, "all@example.com")]
    assert _routes("upward") == [(1, "all@example.com"), (2, "heads@example.com"),
                                 (3, "shift@example.com")]


def test_the_notifications_example_has_the_plans_human_steps_with_targets() -> None:
    """On-call acknowledges within 5 min, root-cause analysis starts within 30 min: human
    steps open from the run's start, beside the automatic ones."""
    plan = load_plan(ROOT / "manifests/examples/notifications.yaml")
    human = {s.name: (s.action, s.parallel, s.target) for s in plan.spec.steps
             if s.action == "manual"}
    assert human == {"acknowledge": ("manual", True, 300.0),
                     "root-cause": ("manual", True, 1800.0)}

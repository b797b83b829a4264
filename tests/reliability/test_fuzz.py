"""Bad input never crashes the controller: mutated plans are rejected with a PlanError
naming a field; any health trace is decided without an exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.model import Sample
from controller.plan import PlanError, parse_plan
from controller.policy import PolicyState, evaluate
from tests.reliability.conftest import TALLY

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
PLAN = parse_plan(BASE)

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                 st.floats(allow_nan=True), st.text(max_size=12),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                      st.integers(), max_size=3))


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = [p for p in paths(BASE) if p]



def mutate(document: Any, mutations: list[Any]) -> Any:
    """A deep copy of `document` with each (path, value, delete) applied where the path
    exists; mutations whose path does not fit the document are passed over."""
    doc = copy.deepcopy(document)
    for path, value, delete in mutations:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    return doc

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), JUNK, st.booleans()), min_size=1,
                max_size=4))
def test_mutated_plans_are_accepted_or_rejected_by_field(mutations: list[Any]) -> None:
    TALLY["fuzz_cases"] += 1
    data = mutate(BASE, mutations)
    try:
        parse_plan(data, "fuzz.yaml")
    except PlanError as err:
        assert err.problems and all(":" in p for p in err.problems)


@settings(max_examples=200, deadline=None)
@given(st.recursive(JUNK, lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=10))
def test_random_documents_are_rejected_cleanly(doc: Any) -> None:
    TALLY["fuzz_cases"] += 1
    try:
        parse_plan(doc, "random.yaml")
    except PlanError as err:
        assert err.problems


SAMPLES = st.lists(st.tuples(st.sampled_from(["web", "api", "hotline", "complaints", "fax"]),
                             st.booleans(), st.floats(0, 1e4, allow_nan=False),
                             st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))),
                   max_size=60)


@settings(max_examples=300, deadline=None)
@given(SAMPLES)
def test_any_trace_is_decided_without_error(trace: list[Any]) -> None:
    TALLY["fuzz_cases"] += 1
    state = PolicyState()
    now = 0.0
    for service, ok, dt, value in trace:
        now += dt
        decision, state = evaluate(PLAN, state, [Sample(service, ok, now, value=value)], now)
        assert decision.action in ("none", "trip", "clear", "hold")
        assert decision.level in (None, 1, 2, 3, 4)
        assert decision.sentence
    if all(ok for _, ok, _, _ in trace):
        assert not state.tripped

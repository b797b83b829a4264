"""Plans from the edges of the plan's own JSON Schema (`controller.plan.json_schema()`, the
schema the FailoverPlan CRD is generated from), one edge or a few at a time on the valid
memory drill plan.

The edges are derived by walking the schema, never hand-listed, so a field added to the plan
is fuzzed without touching this file: each number at its minimum and maximum and just
outside them (and 0, negative, huge, NaN), each duration at `0s`, `1ms`, huge and malformed,
each enum's values and one outside, each name at its length limit and just over, arrays empty
and at their limits, required fields missing, unknown fields added, wrong types.

The property is what `failoverctl validate` and the engine promise a user: a plan file is
either accepted or refused with `PlanError` problems that each name a field path (never a
traceback, never another exception); and every plan it accepts runs in the engine (memory
backends) through healthy and failing rounds, a requested failover and a reconcile without
an exception. Counted as `schema-edge plans tried/handled` in the reliability summary.
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import testing
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase, Sample
from controller.plan import FailoverPlan, PlanError, json_schema, parse_plan
from tests.reliability.conftest import TALLY
from tests.reliability.test_fuzz import BASE

SCHEMA = json_schema()
DEFS: dict[str, Any] = SCHEMA.get("$defs", {})
Path_ = tuple[Any, ...]
Edge = tuple[Path_, Any, bool]  # (path, value, delete) as test_fuzz.mutate applies them
_MISSING = object()
_DURATION_HINT = "(ms|s|m|h|d)"
# 'field.path[0].sub: what is wrong', or '(document)' / '(file)' for the whole file
PROBLEM = re.compile(r"^(\((document|file)\)|[^\s:.\[\]]+([.][^\s:\[\]]+|\[\d+\])*): \S")
# the journal is SQLite committing on every step: in memory-backed /dev/shm a run takes
# 25 ms instead of 60, which keeps a few hundred engine runs within the suite's budget
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


# --- the schema walk ---------------------------------------------------------------------------


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref` (and a lone `allOf`) into `$defs`, keeping the referring node's own keys
    (default, description) on top."""
    while True:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = {**DEFS[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        elif len(schema.get("allOf", [])) == 1:
            schema = {**_resolve(schema["allOf"][0]),
                      **{k: v for k, v in schema.items() if k != "allOf"}}
        else:
            return schema


def branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The concrete alternatives of a node (anyOf/oneOf flattened, `null` left out)."""
    schema = _resolve(schema)
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if not alternatives:
        return [schema]
    out: list[dict[str, Any]] = []
    for alt in alternatives:
        out += [b for b in branches(alt) if b.get("type") != "null"]
    return out


def walk(schema: dict[str, Any], node: Any = BASE, path: Path_ = ()
         ) -> Iterator[tuple[Path_, list[dict[str, Any]], Any]]:
    """Every field position of the schema reachable from the base plan: existing values and
    the absent optional properties of existing objects; array items where the plan has them."""
    alts = branches(schema)
    yield path, alts, node
    for b in alts:
        props: dict[str, Any] = b.get("properties", {})
        for key, sub in props.items():
            if isinstance(node, dict):  # absent: walked as empty, `apply` creates it
                yield from walk(sub, node.get(key, {}), (*path, key))
        extra = b.get("additionalProperties")
        if isinstance(extra, dict) and isinstance(node, dict):
            for key, child in node.items():
                if key not in props:
                    yield from walk(extra, child, (*path, key))
        items = b.get("items")
        if isinstance(items, dict) and isinstance(node, list) and node:
            # the first and the last item: the same schema, a different place in the plan
            for i in sorted({0, len(node) - 1}):
                yield from walk(items, node[i], (*path, i))


# --- the edges of one field --------------------------------------------------------------------


def _number_edges(b: dict[str, Any]) -> list[Any]:
    integer = b.get("type") == "integer"
    out: list[Any] = [0, -1, 10**12, -(10**12), "7", True]
    out += [1.5, math.nan] if integer else [0.5, math.inf, -math.inf, math.nan, 1e308]
    for key, step in (("minimum", -1), ("maximum", 1),
                      ("exclusiveMinimum", -1), ("exclusiveMaximum", 1)):
        bound = b.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool):
            out += [bound, bound + step, bound - step]
            if not integer:
                out += [bound + step / 1000, bound - step / 1000]
    return out


def _string_edges(b: dict[str, Any]) -> list[Any]:
    pattern = b.get("pattern", "")
    out: list[Any] = ["", " ", 0, None]
    if _DURATION_HINT in pattern:  # a duration: the clock's edges and the parser's
        out += ["0s", "0ms", "0.0s", "1ms", "0.1ms", "0.0001ms", "1s", "1h30m", "99999999d",
                "1" + "0" * 30 + "d", "1e3s", "-1s", "10", "s", "1.s", ".5s", "1 s", "5sec",
                "1h-1m", "1d1d1d", 0, 1, -1, 1e18, math.inf, math.nan, "nan", "infs"]
    else:
        longest = b.get("maxLength")
        if isinstance(longest, int):
            out += ["a" * longest, "a" * (longest + 1)]
        if pattern:
            out += ["UPPER", "-lead", "trail-", "a b", "a/b", "ä", "a\nb", "x" * 300]
        else:
            out += ["x" * 10_000, "\x00", "line\nbreak", "ä😀"]
    return out


def _array_edges(b: dict[str, Any], node: Any) -> list[Any]:
    out: list[Any] = [[], [None], "not-a-list", {}]
    first = node[0] if isinstance(node, list) and node else None
    lo, hi = b.get("minItems"), b.get("maxItems")
    if first is not None:
        out += [[first, first], [copy.deepcopy(first) for _ in range(12)], [first, {}]]
        for n in (lo, hi):
            if isinstance(n, int):
                out += [[copy.deepcopy(first) for _ in range(k)] for k in (n - 1, n, n + 1)
                        if 0 <= k <= 64]
    return out


def _object_edges(b: dict[str, Any]) -> list[Any]:
    out: list[Any] = [{}, [], "not-a-mapping"]
    required = set(b.get("required", []))
    if required:
        out.append({k: None for k in sorted(required)})
    return out


def edges_of(path: Path_, alts: list[dict[str, Any]], node: Any) -> list[Edge]:
    values: list[Any] = [None]
    deletable = bool(path) and not isinstance(path[-1], int)
    for b in alts:
        if "enum" in b or "const" in b:
            allowed = b.get("enum", [b.get("const")])
            values += list(allowed)
            values += [f"not-{allowed[0]}", str(allowed[0]).upper()] if allowed else []
            continue
        kind = b.get("type")
        if kind in ("integer", "number"):
            values += _number_edges(b)
        elif kind == "string":
            values += _string_edges(b)
        elif kind == "boolean":
            values += [True, False, "yes", 1]
        elif kind == "array":
            values += _array_edges(b, node)
        elif kind == "object" or "properties" in b:
            values += _object_edges(b)
    out: list[Edge] = [(path, v, False) for v in values]
    if deletable:
        out.append((path, None, True))  # a required field missing, an optional one defaulted
    for b in alts:  # an unknown field on every object that forbids them
        if b.get("additionalProperties") is False and isinstance(node, dict):
            out.append(((*path, "unknownField"), 1, False))
            out.append(((*path, "Name"), "x", False))  # a spelling that differs by case
    return out


def all_edges() -> list[Edge]:
    seen: set[str] = set()
    out: list[Edge] = []
    for path, alts, node in walk(SCHEMA):
        for edge in edges_of(path, alts, node):
            key = repr(edge)
            if key not in seen:
                seen.add(key)
                out.append(edge)
    return out


EDGES = all_edges()


# --- the property ------------------------------------------------------------------------------


def _engine_runs(plan: FailoverPlan, directory: Path) -> None:
    """The engine loads an accepted plan and runs it: healthy rounds, failing rounds, a
    requested failover and one reconcile, without any exception."""
    testing.reset()
    clock = testing.FakeClock()
    journal = Journal(directory / "journal.db")
    try:
        engine = Engine(plan, journal, holder="schema-fuzz", backoff=0.0,
                        clock=Clock(now=clock.now, sleep=clock.sleep))
        names = [s.name for s in plan.spec.services]
        signals = [s.name for s in plan.spec.signals]
        for ok, rounds in ((True, 3), (False, 6)):
            testing.set_health("dc-a", ok)
            for _ in range(rounds):
                clock.advance(0.5)
                engine.tick([Sample(n, ok, clock.now(), latency=0.01) for n in names]
                            + [Sample(n, ok, clock.now(), value=0.0 if ok else 1e6)
                               for n in signals])
        if engine.state().phase is Phase.HEALTHY:  # the trigger held: fail over on request
            engine.request("failover", actor="schema-fuzz", reason="schema edge")
        clock.advance(0.5)
        engine.reconcile()
        engine.release()
    finally:
        journal.close()


def apply(document: Any, mutations: list[Edge]) -> Any:
    """A deep copy of `document` with each (path, value, delete) applied; a missing mapping
    on the way is created (an edge of `spec.approval.required` on a plan without approval);
    a path through a list index or a scalar that is not there is passed over."""
    doc = copy.deepcopy(document)
    for path, value, delete in mutations:
        node = doc
        try:
            for key in path[:-1]:
                if isinstance(node, dict) and key not in node and isinstance(key, str):
                    node[key] = {}
                node = node[key]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            elif not delete:
                node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def check(mutations: list[Edge]) -> None:
    """`failoverctl validate` on the mutated plan file; the engine on what it accepts."""
    TALLY["schema_tried"] += 1
    document = apply(BASE, mutations)
    with tempfile.TemporaryDirectory(prefix="schema-fuzz-", dir=SCRATCH) as tmp:
        try:
            plan = parse_plan(document, "plan.yaml")  # what load_plan does after the YAML
        except PlanError as err:
            assert err.problems, f"refused with no problem named: {document}"
            for problem in err.problems:
                assert PROBLEM.match(problem), f"problem names no field path: {problem!r}"
            TALLY["schema_handled"] += 1
            return
        TALLY["schema_accepted"] += 1
        _engine_runs(plan, Path(tmp))
    TALLY["schema_handled"] += 1


def test_the_walk_reaches_every_definition_and_edge_kind() -> None:
    """The walk follows `$ref`s into every `$defs` entry the base plan uses, so a new field
    is fuzzed without a change here."""
    reached = {p[-1] for p, _, _ in walk(SCHEMA) if p}
    for name in ("consecutiveFailures", "availabilityFloor", "interval", "onFailure", "retries",
                 "probes", "recipients", "level", "required", "approvers", "signals", "expires"):
        assert name in reached, name
    values = {repr(v) for _, v, _ in EDGES}
    for edge in ("'0s'", "'1ms'", "0", "101", "21", "-1", "'not-abort'", "[]"):
        assert edge in values, edge
    assert any(d for _, _, d in EDGES) and len(EDGES) > 300


def _where(exc: BaseException) -> str:
    """The innermost controller frame of a crash: where a fix would go."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/controller/" in f.filename]
    return f" at {frames[-1].filename.rsplit('/controller/', 1)[-1]}:{frames[-1].lineno}" \
        if frames else ""


def test_every_schema_edge_alone_is_accepted_and_runs_or_is_refused_by_field() -> None:
    """Each edge on its own, all of them; the failure lists every crash, each with the one
    change to manifests/examples/memory-drill.yaml that causes it."""
    crashes: list[str] = []
    for path, value, delete in EDGES:
        try:
            check([(path, value, delete)])
        except Exception as exc:  # collected, and the test fails below naming each one
            field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)[1:]
            change = f"delete {field}" if delete else f"{field} = {value!r}"
            crashes.append(f"{change}: {type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:160]}{_where(exc)}")
    assert not crashes, f"{len(crashes)} schema edges crash:\n" + "\n".join(crashes)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(EDGES), min_size=2, max_size=4))
def test_a_few_schema_edges_at_once_are_accepted_and_run_or_refused_by_field(
        mutations: list[Edge]) -> None:
    check(mutations)

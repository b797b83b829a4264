"""The FailoverPlan status's `policy` (issue 19 item 7, issue 20): what the policy observes,
in the API's camelCase and never the probe samples, so a plan's status stays small
whatever its window and probe interval; and a replica that takes over from the status
alone keeps a trip in progress and a failed-over plan's decision. The same on the real
kube-apiserver: tests/e2e/test_operator.py."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from controller import status
from controller.crd import crd
from controller.journal import Journal, PlanState
from controller.model import DecisionState, Phase, Sample
from controller.plan import FailoverPlan, parse_plan
from controller.policy import PolicyState, evaluate
from tests.unit.test_engine import BASE, World, make_plan

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
NAMED = {"services", "signals"}  # maps keyed by the plan's own names
T0 = 1_800_000_000.0


def ten_services(window: str) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    data["spec"]["services"] = [{
        "name": f"service-{i}", "core": i < 5, "interval": "250ms",
        "probes": [{"kind": "memory", "options": {"key": "dc-a", "traffic": "edge"}}]}
        for i in range(10)]
    data["spec"]["trigger"]["window"] = window
    data["spec"]["steps"][-1]["params"]["services"] = ["service-0"]
    return parse_plan(data)


def keys(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, key) of every field name in `node`, the plan's names left out."""
    if isinstance(node, dict):
        for key, value in node.items():
            named = path.rsplit(".", 1)[-1] in NAMED
            if not named:
                yield path, key
            yield from keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from keys(item, f"{path}[{i}]")


def sample_lists(node: Any, path: str = "") -> Iterator[str]:
    """Where `node` holds a list of lists (how samples were kept: `[[t, ok], ...]`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from sample_lists(value, f"{path}.{key}")
    elif isinstance(node, list):
        if any(isinstance(item, list) for item in node):
            yield path
        for i, item in enumerate(node):
            yield from sample_lists(item, f"{path}[{i}]")


def probed(journal: Journal, plan: FailoverPlan) -> tuple[PolicyState, dict[str, Any]]:
    """The status of `plan` after a window full of 250 ms probes of its ten services, the
    last 2.5 s of which failed for half of them."""
    window = plan.spec.trigger.window
    end = T0 + window
    samples = []
    for n in range(int(window * 4)):
        at = T0 + n * 0.25
        samples += [Sample(f"service-{i}", not (i % 2 and at >= end - 2.5), at,
                           detail="connection refused") for i in range(10)]
    decision, state = evaluate(plan, PolicyState(), samples, end)
    journal.save_plan_state(PlanState(plan.name, Phase.FAILED_OVER, 1, "dc-b",
                                      decision.sentence, state.to_json(), end, {}))
    return state, status.build(journal, plan.name, generation=3, previous={}, now=end,
                               watched=plan)


def test_a_plans_status_is_small_and_in_camelcase_whatever_its_window(
        journal: Journal) -> None:
    sizes = {}
    for window in ("5s", "30m"):
        plan = ten_services(window)
        state, built = probed(journal, plan)
        assert len(state.services["service-0"].history) == plan.spec.trigger.window * 4
        text = json.dumps(built)
        sizes[window] = len(text)
        assert len(text) < 4096, f"a {window} window: {len(text)} bytes"
        assert not list(sample_lists(built)), text
        assert [(p, k) for p, k in keys(built) if not CAMEL.match(k)] == []
        seen = built["policy"]
        assert seen["servicesDown"] == [f"service-{i}" for i in (1, 3, 5, 7, 9)]
        assert seen["availability"] == 60.0 and seen["services"]["service-1"][
            "consecutiveFailures"] == 10
        assert seen["services"]["service-0"]["probes"] == plan.spec.trigger.window * 4
    assert abs(sizes["30m"] - sizes["5s"]) < 64, sizes  # the window only moves numbers


def test_every_field_the_status_has_is_described_in_the_crd(journal: Journal) -> None:
    """What `kubectl explain fop.status` shows, and what the API server keeps (a field the
    schema does not describe would be pruned from every status write)."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    plan = ten_services("5s")
    _, watched = probed(journal, plan)
    invalid = status.build(journal, plan.name, generation=3, previous={}, now=T0,
                           problems=["spec.steps: bad"], token=4, holder="replica-a",
                           applied=(3, {"sites": {}}))

    def undescribed(node: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
        if not isinstance(node, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        fields = schema.get("properties")
        for key, value in node.items():
            sub = fields.get(key) if fields is not None else schema.get("additionalProperties")
            if sub is None:
                yield f"{path}.{key}"
            else:
                yield from undescribed(value, sub, f"{path}.{key}")

    for built in (watched, invalid):
        assert list(undescribed(built, schema, "status")) == []
    assert "run" in schema["properties"]
    assert "samples" in schema["properties"]["policy"]["description"]


def adopt(frm: Journal, into: Journal, plan: FailoverPlan, now: float) -> dict[str, Any]:
    """What a replica that takes over reads from the status (`Operator._adopt`): the run,
    and the plan's state with the policy's observations; never the other's journal."""
    written = status.build(frm, plan.name, generation=1, previous={}, now=now, watched=plan)
    run = written.get("run")
    if run:
        into.import_run({**run, "plan": plan.name}, run["steps"])
    state = status.plan_state(json.loads(json.dumps(written)), plan.name)
    assert state is not None
    into.save_plan_state(state)
    return written


def test_a_new_leader_from_the_status_alone_keeps_a_failed_over_plans_trip(
        journal: Journal, tmp_path: Any) -> None:
    old = World(make_plan(), journal)
    old.tick(True)
    assert old.outage().phase is Phase.FAILED_OVER
    old.tick(False)  # the outage goes on: "still tripped"
    other = Journal(tmp_path / "other.db")
    try:
        before = adopt(journal, other, old.plan, old.clock.now())
        assert before["policy"]["tripped"] is True
        new = World(old.plan, other, holder="test-2", clock=old.clock)
        for _ in range(10):  # the outage goes on: still tripped, no trip again, no new run
            assert new.tick(False).phase is Phase.FAILED_OVER
        assert [r.id for r in other.runs(old.plan.name, limit=5)] == [old.run().id]
        assert not other.decisions(old.plan.name, limit=5)  # nothing new to say
        after = status.build(other, old.plan.name, generation=1, previous=before,
                             now=new.clock.now(), watched=old.plan)
        assert after["policy"]["decided"] == DecisionState.STILL_TRIPPED.value
        assert after["level"] == before["level"] == 1
        assert not [e for e in status.events(before, after) if e[1] == "Decision"]
        for _ in range(40):  # the primary recovers: cleared (once over the floor again)
            new.tick(True)
        said = [d["action"] for d in other.decisions(old.plan.name, limit=5)]
        assert said[:1] == ["clear"], said
    finally:
        other.close()


def test_a_new_leader_from_the_status_alone_starts_the_run_of_a_trip_in_progress(
        journal: Journal, tmp_path: Any) -> None:
    """The leader decided the trip and died before it started the run: the next one
    starts it at once, with the trip's level and detection time, not after detecting the
    outage afresh."""
    plan = make_plan()
    clock = World(plan, journal).clock
    now = clock.now()
    samples = [Sample(s, False, now + i * 0.2) for i in range(6)
               for s in ("web", "api", "hotline")]
    _, degraded = evaluate(plan, PolicyState(), samples, now + 1.0)
    decision, tripped = evaluate(plan, degraded, [], now + 1.5)
    assert decision.state is DecisionState.TRIPPED and tripped.detected_at is not None
    journal.save_plan_state(PlanState(plan.name, Phase.TRIPPED, decision.level, "dc-a",
                                      decision.sentence, tripped.to_json(), now + 1.0, {}))
    clock.advance(1.0)
    other = Journal(tmp_path / "other.db")
    try:
        adopt(journal, other, plan, clock.now())
        new = World(plan, other, holder="test-2", clock=clock)
        assert new.tick(False).phase is Phase.FAILED_OVER
        run = other.runs(plan.name, limit=1)[0]
        assert run.kind == "failover" and run.level == decision.level
        assert abs(run.detected_at - tripped.detected_at) < 0.001
    finally:
        other.close()

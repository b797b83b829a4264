"""Exact, honest revert of a DNS step, against the in-memory fake, real BIND and moto.

The DNS step (`controller.steps.dns.Dns`) runs over each provider (world = memory | rfc2136 |
route53): revert reads the records first and, per record, puts back what the step changed
(deleting a record it created), says when a record is already the original, and leaves
and reports, never overwrites, a record someone changed during the incident. A re-run
(after a crash) finds nothing left to do and still proves what is served; a step whose
write landed before a crash proves it on resume.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from controller.model import Record
from controller.plan import Step
from controller.steps import StepContext
from controller.steps.dns import Dns


def A(name: str, *values: str, ttl: int = 300) -> Record:
    return Record(name, "A", ttl, tuple(sorted(values)))


def step(*records: Record) -> Step:
    return Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "zone",
                                "params": {"records": [r.to_json() for r in records]}})


def context(world: Any) -> StepContext:
    return StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                       backends=SimpleNamespace(dns=lambda _: world.provider),  # type: ignore[arg-type]
                       lookup_evidence=lambda *_: {})


def cut_over(world: Any, s: Step) -> dict[str, Any]:
    """prepare (saved first, as the executor does), then perform: the evidence revert gets."""
    prepared = {"prepared": True, **Dns().prepare(s, context(world))}
    return {**Dns().apply(s, context(world), prepared), **prepared}


def now(world: Any, name: str) -> list[Record]:
    return [r for r in world.provider.records(names=[name]) if r.type == "A"]


def test_revert_deletes_a_record_the_step_created(world: Any) -> None:
    name = world.name("created")
    s = step(A(name, "198.51.100.30", ttl=60))
    evidence = cut_over(world, s)
    assert evidence["before"] == [] and now(world, name) == [A(name, "198.51.100.30", ttl=60)]
    result = Dns().revert(s, context(world), evidence)
    assert now(world, name) == []
    assert result["reverted"] == [{"record": f"{name} A", "action": "deleted",
                                   "stepWrote": ["198.51.100.30"], "original": []}]
    assert result["left"] == [] and result["delete"]["deleted"]


def test_revert_restores_a_record_the_step_changed(world: Any) -> None:
    name = world.name("changed")
    world.seed(A(name, "192.0.2.30", "192.0.2.31", ttl=600))
    s = step(A(name, "198.51.100.31", ttl=60))
    evidence = cut_over(world, s)
    result = Dns().revert(s, context(world), evidence)
    assert now(world, name) == [A(name, "192.0.2.30", "192.0.2.31", ttl=600)]
    assert result["reverted"] == [{"record": f"{name} A", "action": "restored",
                                   "stepWrote": ["198.51.100.31"],
                                   "original": ["192.0.2.30", "192.0.2.31"]}]


def test_a_ttl_only_step_gets_its_ttl_back(world: Any) -> None:
    """A pre-lowering step keeps the values and changes only the TTL: revert must not
    mistake the lowered record for the original."""
    name = world.name("ttl-back")
    world.seed(A(name, "192.0.2.32", ttl=3600))
    s = step(A(name, "192.0.2.32", ttl=30))
    evidence = cut_over(world, s)
    assert now(world, name) == [A(name, "192.0.2.32", ttl=30)]
    result = Dns().revert(s, context(world), evidence)
    assert now(world, name) == [A(name, "192.0.2.32", ttl=3600)]
    assert [r["action"] for r in result["reverted"]] == ["restored"]


def test_a_change_made_during_the_incident_is_left_and_reported(world: Any) -> None:
    moved, ours = world.name("moved"), world.name("ours")
    world.seed(A(moved, "192.0.2.33"))
    world.seed(A(ours, "192.0.2.34"))
    s = step(A(moved, "198.51.100.33"), A(ours, "198.51.100.34"))
    evidence = cut_over(world, s)
    world.seed(A(moved, "203.0.113.33"))  # an operator re-pointed it during the incident
    result = Dns().revert(s, context(world), evidence)
    assert now(world, moved) == [A(moved, "203.0.113.33")]  # theirs, not overwritten
    assert now(world, ours) == [A(ours, "192.0.2.34")]  # the rest is still reverted
    assert result["left"] == [{"record": f"{moved} A", "now": ["203.0.113.33"],
                               "stepWrote": ["198.51.100.33"], "original": ["192.0.2.33"],
                               "ttl": {"now": 300, "stepWrote": 300, "original": 300}}]
    assert [r["record"] for r in result["reverted"]] == [f"{ours} A"]
    assert f"{moved} A is ['203.0.113.33']" in result["note"]


def test_a_created_record_someone_changed_is_not_deleted(world: Any) -> None:
    name = world.name("created-then-changed")
    s = step(A(name, "198.51.100.35"))
    evidence = cut_over(world, s)
    world.seed(A(name, "203.0.113.35"))
    result = Dns().revert(s, context(world), evidence)
    assert now(world, name) == [A(name, "203.0.113.35")]
    assert [(x["now"], x["original"]) for x in result["left"]] == [(["203.0.113.35"], [])]
    assert result["reverted"] == [] and "delete" not in result


def test_a_revert_run_again_after_a_crash_finds_nothing_to_do_and_proves_it(
        world: Any) -> None:
    changed, created = world.name("again-changed"), world.name("again-created")
    world.seed(A(changed, "192.0.2.36"))
    s = step(A(changed, "198.51.100.36"), A(created, "198.51.100.37"))
    evidence = cut_over(world, s)
    Dns().revert(s, context(world), evidence)  # ... and the controller crashed here
    again = Dns().revert(s, context(world), evidence)
    assert again["reverted"] == [] and again["left"] == []
    assert again["unchanged"] == [
        {"record": f"{changed} A", "now": ["192.0.2.36"], "why": "already the original"},
        {"record": f"{created} A", "now": [], "why": "already the original"}]
    assert again["verify"]["verified"] == [A(changed, "192.0.2.36").to_json(),
                                           Record(created, "A", 0, ()).to_json()]
    assert now(world, changed) == [A(changed, "192.0.2.36")] and now(world, created) == []


def test_a_step_resumed_after_its_write_landed_proves_it_is_served(world: Any) -> None:
    name = world.name("resumed")
    s = step(A(name, "198.51.100.38", ttl=60))
    prepared = {"prepared": True, **Dns().prepare(s, context(world))}
    world.provider.apply(expected=[], desired=[A(name, "198.51.100.38", ttl=60)])  # crashed
    evidence = Dns().apply(s, context(world), prepared)
    assert evidence["alreadyApplied"] is True
    assert evidence["verified"] == [A(name, "198.51.100.38", ttl=60).to_json()]

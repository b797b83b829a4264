"""The in-memory DNS fake as a fencing-aware target, and the DNS step's rules over it.

- every write is recorded with the fencing token and holder of the step attempt that
  made it (the simulation's "at most one writer" invariant reads them);
- a write with a token older than one already accepted is refused (`StaleToken`) and
  changes nothing, for swaps and deletes alike; a write outside any step is accepted;
- the DNS step fails when a resumed step's records cannot be proven served, and a revert
  of a step that never read the original (so never wrote) writes nothing.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from controller import fencing, registry
from controller.dns import DnsNotServed
from controller.model import Record
from controller.plan import Step
from controller.secrets import Secrets
from controller.steps import StepContext
from controller.steps.dns import Dns

NAME = "www.example.test."


def A(*values: str, ttl: int = 300, name: str = NAME) -> Record:
    return Record(name, "A", ttl, tuple(sorted(values)))


def fake(**options: Any) -> Any:
    return registry.build("dns", "memory", {"key": "fenced", **options}, secrets=Secrets())


def test_each_write_is_recorded_with_its_token_and_holder() -> None:
    p = fake()
    p.apply(expected=[], desired=[A("192.0.2.1")])  # outside a step: a person, a seed
    with fencing.scope(fencing.Fence(4, "controller-a")):
        p.apply(expected=[A("192.0.2.1")], desired=[A("198.51.100.1")])
        p.delete(expected=[A("198.51.100.1")])
        p.delete(expected=[A("198.51.100.1")])  # already gone: nothing written
    assert [(w["token"], w["holder"], w["action"], w["records"][0]["values"])
            for w in p.writes()] == [(None, None, "apply", ["192.0.2.1"]),
                                     (4, "controller-a", "apply", ["198.51.100.1"]),
                                     (4, "controller-a", "delete", ["198.51.100.1"])]


def test_a_write_with_a_stale_token_is_refused_and_changes_nothing() -> None:
    p = fake(records=[A("192.0.2.1").to_json()])
    with fencing.scope(fencing.Fence(7, "controller-b")):  # the new holder wrote
        p.apply(expected=[A("192.0.2.1")], desired=[A("198.51.100.1")])
    with fencing.scope(fencing.Fence(6, "controller-a")):  # the deposed one, still running
        with pytest.raises(fencing.StaleToken, match=r"fencing token 6 \(controller-a\) is "
                                                     r"older than token 7"):
            p.apply(expected=[A("198.51.100.1")], desired=[A("203.0.113.1")])
        with pytest.raises(fencing.StaleToken):
            p.delete(expected=[A("198.51.100.1")])
    assert p.records(names=[NAME]) == [A("198.51.100.1")]
    assert [w["token"] for w in p.writes()] == [7]
    with fencing.scope(fencing.Fence(7, "controller-b")):  # the same token may write again
        p.apply(expected=[A("198.51.100.1")], desired=[A("198.51.100.2")])
    assert [w["token"] for w in p.writes()] == [7, 7]


def test_the_refusal_holds_across_processes_sharing_a_state_file(tmp_path: Any) -> None:
    state = str(tmp_path / "dns.json")
    new, old = fake(stateFile=state), fake(stateFile=state)
    with fencing.scope(fencing.Fence(2, "controller-b")):
        new.apply(expected=[], desired=[A("198.51.100.1")])
    with fencing.scope(fencing.Fence(1, "controller-a")), pytest.raises(fencing.StaleToken):
        old.apply(expected=[A("198.51.100.1")], desired=[A("203.0.113.1")])
    assert old.writes() == new.writes() and len(new.writes()) == 1


def test_a_cancelled_step_writes_nothing_to_the_fake() -> None:
    p = fake()
    fence = fencing.Fence(1, "controller-a")
    fence.cancel("lease lost")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled):
        p.apply(expected=[], desired=[A("198.51.100.1")])
    assert p.records() == [] and p.writes() == []


# --- the DNS step over the fake -------------------------------------------------------------


def step() -> Step:
    return Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "zone",
                                "params": {"records": [A("198.51.100.1", ttl=60).to_json()]}})


def context(p: Any) -> StepContext:
    return StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                       backends=SimpleNamespace(dns=lambda _: p),  # type: ignore[arg-type]
                       lookup_evidence=lambda *_: {})


def test_a_resumed_step_fails_when_its_records_cannot_be_proven_served() -> None:
    p = fake(failVerify=True)
    prepared = {"prepared": True, **Dns().prepare(step(), context(p))}
    p.apply(expected=[], desired=[A("198.51.100.1", ttl=60)])  # landed, then a crash
    with pytest.raises(DnsNotServed, match="did not serve them within verifyTimeout"):
        Dns().apply(step(), context(p), prepared)


def test_revert_of_a_step_whose_prepare_failed_writes_nothing() -> None:
    p = fake(records=[A("192.0.2.1").to_json()])
    result = Dns().revert(step(), context(p), {"prepared": True})
    assert "never wrote: nothing to revert" in result["note"]
    assert p.records() == [A("192.0.2.1")] and p.writes() == []


def test_a_revert_whose_write_meets_a_concurrent_change_reads_again_and_leaves_it() -> None:
    """Between the revert's read and its compare-and-swap someone writes: the swap is
    refused, the revert reads again, and now reports the record as left."""
    p = fake(records=[A("192.0.2.1").to_json()])
    prepared = {"prepared": True, **Dns().prepare(step(), context(p))}
    Dns().apply(step(), context(p), prepared)
    real_apply = p.apply

    def racing_apply(**kw: Any) -> Any:
        p.apply = real_apply
        real_apply(expected=[A("198.51.100.1", ttl=60)], desired=[A("203.0.113.4")])
        return real_apply(**kw)

    p.apply = racing_apply
    result = Dns().revert(step(), context(p), prepared)
    assert p.records() == [A("203.0.113.4")]
    assert [x["now"] for x in result["left"]] == [["203.0.113.4"]]
    assert result["reverted"] == []

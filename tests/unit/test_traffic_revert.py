"""A traffic step that stops when told to, a revert that compares before it writes, and a
memory edge that records and fences every write (issue 14, items 1 and 7, with the fake).

- A stepped shift cancelled in its pause (from another thread, as the executor does on
  a timeout or a lost lease) raises `fencing.Cancelled` at once and writes nothing more.
- A revert restores the original only when the traffic is where the step put it (its
  final weights, any intermediate step, the half-way state of enable-then-drain), writes
  nothing when the traffic is already back, and reports — never overwrites — weights a
  person set during the incident. It needs only what every attempt leaves (the `before`
  saved by prepare and the step definition) and is idempotent.
- The memory edge records each write with its fencing token and holder and refuses a
  write older than one it accepted; its `delay` is a cancellable `fencing.pause`.
(The same on a real HAProxy and kube-apiserver: tests/contract/traffic, tests/e2e.)
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from controller import fencing, registry
from controller.backends import Backends
from controller.model import Evidence
from controller.plan import FailoverPlan
from controller.secrets import Secrets
from controller.steps import StepContext
from controller.steps.traffic import Traffic, _merge, _same
from controller.testing import FakeClock, FakeTrafficBackend
from tests.unit.test_engine import make_plan

ORIGINAL = {"dc-a": 100, "dc-b": 0}
CUTOVER = {"dc-a": 0, "dc-b": 100}


def plan_with(**params: Any) -> FailoverPlan:
    def mutate(spec: dict[str, Any]) -> None:
        spec["steps"][1]["params"].update(params)
        spec["steps"][1]["timeout"] = "1h"
    return make_plan(mutate)


class TrafficStep:
    """The plan's traffic step with its context, driven like the executor drives it."""

    def __init__(self, **params: Any):
        self.plan = plan_with(**params)
        self.step = self.plan.spec.steps[1]
        self.ctx = StepContext(plan=self.plan, run_id="r", level=1,
                               backends=Backends(self.plan),
                               lookup_evidence=lambda run, step: {})
        self.edge: FakeTrafficBackend = self.ctx.backends.get("edge")

    def prepare(self) -> Evidence:
        return Traffic().prepare(self.step, self.ctx)

    def perform(self, prepared: Evidence) -> Evidence:
        return {**Traffic().apply(self.step, self.ctx, prepared), **prepared}

    def revert(self, evidence: Evidence) -> Evidence:
        return Traffic().revert(self.step, self.ctx, evidence)


def in_thread(fence: fencing.Fence, fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `fn` under `fence` in a worker thread, as the executor runs a step's work."""
    box: dict[str, Any] = {}

    def run() -> None:
        with fencing.scope(fence):
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, box


def wait_for(condition: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# --- a stepped shift stops when told to -----------------------------------------------------


def test_a_stepped_shift_cancelled_in_its_pause_stops_at_the_step_reached() -> None:
    s = TrafficStep(steps=[10, 50, 100], pause="30s")
    prepared = s.prepare()
    fence = fencing.Fence(7, "replica-1")
    worker, box = in_thread(fence, lambda: s.perform(prepared))
    wait_for(lambda: s.edge.current() == {"dc-a": 90, "dc-b": 10}, "the 10 % step")
    written = s.edge.writes()
    started = time.monotonic()
    fence.cancel("the step's timeout passed")
    worker.join(5)
    assert not worker.is_alive(), "the shift went on pausing after the cancel"
    assert time.monotonic() - started < 2
    assert isinstance(box.get("error"), fencing.Cancelled), box
    assert str(box["error"]) == "the step's timeout passed"
    time.sleep(0.05)
    assert s.edge.writes() == written  # not one write after the cancel
    assert s.edge.current() == {"dc-a": 90, "dc-b": 10}
    assert [(w["weights"], w["token"], w["holder"]) for w in written] == [
        ({"dc-a": 100, "dc-b": 10}, 7, "replica-1"),  # the target enabled first
        ({"dc-a": 90, "dc-b": 10}, 7, "replica-1")]


def test_a_cancelled_fence_stops_an_instant_shift_before_it_writes() -> None:
    s = TrafficStep()
    prepared = s.prepare()
    fence = fencing.Fence(1, "replica-1")
    fence.cancel("lost the lease")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled, match="lost the lease"):
        s.perform(prepared)
    assert s.edge.writes() == [] and s.edge.current() == ORIGINAL


def test_a_slow_memory_edge_is_cancellable_mid_delay() -> None:
    edge = registry.build("traffic", "memory", {"key": "slow", "weights": ORIGINAL,
                                                "delay": 30}, secrets=Secrets())
    fence = fencing.Fence(3, "replica-1")
    worker, box = in_thread(fence, lambda: edge.shift(to="dc-b", weights=CUTOVER))
    time.sleep(0.1)
    fence.cancel("the step's timeout passed")
    worker.join(5)
    assert not worker.is_alive() and isinstance(box.get("error"), fencing.Cancelled)
    assert edge.writes() == [] and edge.current() == ORIGINAL


def test_a_slow_memory_edge_waits_on_the_simulated_clock() -> None:
    clock = FakeClock()
    start = clock.now()
    fence = fencing.Fence(3, "sim", wait=lambda seconds, f: clock.advance(seconds))
    edge = registry.build("traffic", "memory", {"key": "slow", "weights": ORIGINAL,
                                                "delay": 3600}, secrets=Secrets())
    began = time.monotonic()
    with fencing.scope(fence):
        edge.shift(to="dc-b", weights=CUTOVER)
    assert time.monotonic() - began < 1  # an hour of simulated time, no real wait
    assert clock.now() - start == 3600
    assert edge.current() == CUTOVER


# --- the memory edge fences its writes ---------------------------------------------------


def test_the_memory_edge_records_each_write_and_refuses_an_older_token() -> None:
    edge = registry.build("traffic", "memory", {"key": "fenced", "weights": ORIGINAL},
                          secrets=Secrets())
    with fencing.scope(fencing.Fence(5, "new-leader")):
        edge.shift(to="dc-b", weights=CUTOVER)
    with fencing.scope(fencing.Fence(4, "deposed")), pytest.raises(
            fencing.StaleToken, match=r"fencing token 4 \(deposed\) is older than token 5"):
        edge.revert(to=ORIGINAL)
    assert edge.current() == CUTOVER  # the deposed holder changed nothing
    with fencing.scope(fencing.Fence(5, "new-leader")):
        edge.revert(to=ORIGINAL)  # the same holder may go on writing
    edge.shift(to="dc-b", weights=CUTOVER)  # outside any step: unfenced, recorded as such
    assert [(w["weights"], w["token"], w["holder"]) for w in edge.writes()] == [
        ({"dc-a": 100, "dc-b": 100}, 5, "new-leader"), (CUTOVER, 5, "new-leader"),
        (ORIGINAL, 5, "new-leader"),
        ({"dc-a": 100, "dc-b": 100}, None, None), (CUTOVER, None, None)]


# --- a revert compares before it writes ----------------------------------------------------


def test_a_revert_restores_what_the_step_set() -> None:
    s = TrafficStep()
    evidence = s.perform(s.prepare())
    assert s.edge.current() == CUTOVER
    back = s.revert(evidence)
    assert s.edge.current() == ORIGINAL
    assert back["before"] == CUTOVER and back["after"] == ORIGINAL
    assert "left" not in back
    writes = len(s.edge.writes())
    again = s.revert(evidence)  # re-run after a crash: nothing more to write
    assert again["writes"] == 0 and len(s.edge.writes()) == writes


def test_a_revert_reports_and_keeps_a_change_made_during_the_incident() -> None:
    s = TrafficStep()
    evidence = s.perform(s.prepare())
    s.edge.revert(to={"dc-b": 30})  # someone moved 30 % by hand after the failover
    writes = len(s.edge.writes())
    back = s.revert(evidence)
    assert s.edge.current() == {"dc-a": 0, "dc-b": 30}  # kept, not overwritten
    assert len(s.edge.writes()) == writes
    assert back["left"] == [{"destination": "dc-b", "now": 30, "stepSet": 100,
                             "original": 0}]
    assert back["note"] == (
        "step redirect-traffic: traffic was changed during the incident by someone else: "
        "dc-b is 30 (the step set 100, the original was 0); left as it is, not reverted "
        "to {'dc-a': 100, 'dc-b': 0}. Set the weights by hand if the original is wanted.")


def test_a_revert_with_traffic_already_back_writes_nothing_and_says_so() -> None:
    s = TrafficStep()
    evidence = s.perform(s.prepare())
    s.edge.revert(to=ORIGINAL)  # someone already moved it back
    writes = len(s.edge.writes())
    back = s.revert(evidence)
    assert len(s.edge.writes()) == writes and back["writes"] == 0
    assert back["note"] == ("step redirect-traffic: traffic is already at the original "
                            "weights {'dc-a': 100, 'dc-b': 0}; nothing to write")


@pytest.mark.parametrize("stopped_at", [
    {"dc-a": 90, "dc-b": 10},  # the first step of [10, 50, 100]
    {"dc-a": 50, "dc-b": 50},  # the second
    {"dc-a": 90, "dc-b": 50},  # between the two writes of the second (target first)
    {"dc-a": 0, "dc-b": 100},  # the last
    {"dc-a": 100, "dc-b": 50},  # half-way back after a failed check at 50 %
], ids=["10%", "50%", "enabling-50%", "100%", "shifting-back"])
def test_a_stepped_shift_that_stopped_anywhere_is_reverted_from_before_alone(
        stopped_at: dict[str, int]) -> None:
    """A failed or unknown step: only `before` (from prepare) and the definition exist."""
    s = TrafficStep(steps=[10, 50, 100], pause="1ms")
    prepared = s.prepare()
    s.edge.revert(to=stopped_at)  # where the interrupted attempt left it
    back = s.revert(prepared)
    assert "left" not in back, back
    assert s.edge.current() == ORIGINAL
    again = s.revert(prepared)  # re-run after a crash: nothing more to do
    assert again["writes"] == 0 and s.edge.current() == ORIGINAL


def test_weights_no_step_of_the_shift_sets_are_left_even_for_a_stepped_shift() -> None:
    s = TrafficStep(steps=[10, 50, 100], pause="1ms")
    prepared = s.prepare()
    s.edge.revert(to={"dc-a": 70, "dc-b": 30})  # not 10/50/100: a person's split
    back = s.revert(prepared)
    assert s.edge.current() == {"dc-a": 70, "dc-b": 30}
    assert back["left"] == [
        {"destination": "dc-a", "now": 70, "stepSet": 0, "original": 100},
        {"destination": "dc-b", "now": 30, "stepSet": 100, "original": 0}]


def test_old_evidence_with_before_only_is_still_revertible() -> None:
    s = TrafficStep()
    s.perform(s.prepare())
    old = {"before": dict(ORIGINAL)}  # journaled before snapshots existed
    s.revert(old)
    assert s.edge.current() == ORIGINAL
    assert s.revert(old)["writes"] == 0


def test_prepare_saves_the_backends_snapshot_with_the_weights() -> None:
    assert TrafficStep().prepare() == {"before": ORIGINAL, "snapshot": {"weights": ORIGINAL}}


def test_a_revert_is_fenced_like_the_step() -> None:
    s = TrafficStep()
    evidence = s.perform(s.prepare())
    fence = fencing.Fence(9, "replica-2")
    fence.cancel("lost the lease")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled):
        s.revert(evidence)
    assert s.edge.current() == CUTOVER


def test_weights_compare_alike_when_haproxy_reports_a_site_server_by_server() -> None:
    """HAProxy reports `site/server` keys when a site's servers disagree; a site weight
    equals them when every server of the site carries it."""
    assert _same({"pool": 50, "dc-b": 0}, {"pool/web1": 50, "pool/web3": 50, "dc-b": 0})
    assert not _same({"pool": 50}, {"pool/web1": 50, "pool/web3": 0})
    assert _merge({"pool/web1": 100, "pool/web3": 0, "dc-b": 0}, {"pool": 0, "dc-b": 100}) \
        == {"dc-b": 100, "pool": 0}

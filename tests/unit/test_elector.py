"""`controller/elector.py` and `controller/operator_fence.py`: a leader's fencing token
rises only to outbid a stored token, once, and never goes back; a plan two deployments
claim is left to one of them instead of being outbid back and forth."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.elector import Elector, LeaderConfig
from controller.fencing import LostLease
from controller.kube import Lease
from controller.operator_fence import PlanFences
from controller.testing_kube import FakeKube

NS = "failover-system"
CONFIG = LeaderConfig(lease_name="lease", lease_duration=3, renew_deadline=2,
                      retry_period=0.3)


def _leader(kube: FakeKube) -> Elector:
    elector = Elector(kube, NS, "me", CONFIG)
    assert elector.round()
    return elector


def _in_thread(fn: Callable[[], bool]) -> Future[bool]:
    """`fn()` on a thread of its own (as the election loop runs beside the workers)."""
    done: Future[bool] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to the test
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done


def _lease(kube: FakeKube) -> Lease:
    lease = kube.get_lease(NS, CONFIG.lease_name)
    assert lease is not None
    return lease


def test_a_renewal_that_raced_our_own_advance_never_sets_the_token_back() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    renew = kube.acquire_lease

    def renewed_then_advanced(*args: Any, **kwargs: Any) -> Lease | None:
        lease = renew(*args, **kwargs)  # renewed with token 0 ...
        elector.advance(21)  # ... when a worker raises the token before the round goes on
        return lease

    kube.acquire_lease = renewed_then_advanced  # type: ignore[method-assign]
    assert elector.round()
    kube.acquire_lease = renew  # type: ignore[method-assign]
    assert elector.token() == 21 == _lease(kube).transitions
    elector.fence()  # still ours: the renewal's answer was older than the advance
    assert elector.advance(21) == 21


def test_a_fence_read_sent_before_our_own_advance_keeps_the_lead() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    read = elector._read_lease

    def read_then_advanced(wait: float) -> Lease | None:
        lease = read(wait)  # the Lease as it was (token 0) ...
        elector._read_lease = read  # type: ignore[method-assign]
        elector.advance(8)  # ... answered after another worker raised the token
        return lease

    elector._read_lease = read_then_advanced  # type: ignore[method-assign]
    elector.fence()
    assert elector.leading() and elector.token() == 8


def test_the_renewal_in_flight_as_a_raise_begins_does_not_lose_the_raise() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    renew, raise_ = kube.renew_lease, kube.advance_lease
    round_read, raise_read, renewed = threading.Event(), threading.Event(), threading.Event()

    def renewal(*args: Any, **kwargs: Any) -> Lease:
        round_read.set()  # the round has read the Lease ...
        assert raise_read.wait(30)  # ... and writes its renewal after the raise read it
        try:
            return renew(*args, **kwargs)
        finally:
            renewed.set()

    def raised(lease: Lease, *, transitions: int) -> Lease:
        raise_read.set()
        assert renewed.wait(30)
        return raise_(lease, transitions=transitions)  # 409 the first time: read again

    kube.renew_lease, kube.advance_lease = renewal, raised  # type: ignore[method-assign]
    renewing = _in_thread(elector.round)
    assert round_read.wait(30)
    assert elector.advance(22) == 22 == _lease(kube).transitions
    assert renewing.result(timeout=30)
    assert elector.leading() and elector.token() == 22
    elector.fence()


def test_rounds_while_a_raise_is_in_flight_leave_the_lease_to_it() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    raise_ = kube.advance_lease
    rounds: list[bool] = []

    def raised(lease: Lease, *, transitions: int) -> Lease:
        # another round of the election loop, between the raise's read and its write
        # (as every time on a loaded host whose requests take the retry period)
        rounds.append(_in_thread(elector.round).result(timeout=30))
        return raise_(lease, transitions=transitions)

    version = _lease(kube).resource_version
    kube.advance_lease = raised  # type: ignore[method-assign]
    assert elector.advance(22) == 22 == _lease(kube).transitions
    assert rounds == [True]  # still leading; the Lease written once, by the raise
    assert int(_lease(kube).resource_version) == int(version) + 1
    assert elector.round() and elector.token() == 22  # renewed again afterwards
    elector.fence()


def test_raises_back_to_back_never_hold_the_renewal_past_half_the_deadline() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    raise_ = kube.advance_lease
    rounds: list[bool] = []

    def raised(lease: Lease, *, transitions: int) -> Lease:
        if not rounds:  # the lead renewed long ago: raise after raise kept the rounds off
            assert elector._renewed is not None
            elector._renewed -= 0.6 * CONFIG.renew_deadline
            rounds.append(_in_thread(elector.round).result(timeout=30))
        return raise_(lease, transitions=transitions)

    version = _lease(kube).resource_version
    kube.advance_lease = raised  # type: ignore[method-assign]
    assert elector.advance(22) == 22 == _lease(kube).transitions
    assert rounds == [True]
    # renewed by the round (the raise it refused read the Lease again and was written)
    assert int(_lease(kube).resource_version) == int(version) + 2
    assert elector.token() == 22 and elector.leading()
    elector.fence()


def test_a_token_raised_already_is_not_raised_again() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    assert elector.advance(21) == 21
    version = _lease(kube).resource_version
    assert elector.advance(8) == 21  # another plan's, smaller: nothing written
    assert elector.advance(21) == 21
    assert _lease(kube).resource_version == version


def test_a_lease_taken_over_fences_us_out() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    kube.advance_lease(_lease(kube), transitions=5)  # not by us: someone else wrote it
    with pytest.raises(LostLease, match="changed hands"):
        elector.fence()
    assert not elector.leading()


class _Lease:
    """A shard's Lease as PlanFences sees it."""

    def __init__(self) -> None:
        self.held = 0
        self.raised: list[int] = []

    def fence(self) -> None:
        return None

    def token(self) -> int:
        return self.held

    def advance(self, at_least: int) -> int:
        self.raised.append(at_least)
        self.held = max(self.held, at_least)
        return self.held


def _plan(kube: FakeKube, token: int, holder: str) -> dict[str, Any]:
    kube.update_status(GROUP, VERSION, NS, PLURAL, "p", lambda obj: {
        **obj, "status": {"phase": "Healthy", "fencingToken": token,
                          "fencingHolder": holder}})
    return kube.get(GROUP, VERSION, NS, PLURAL, "p")


def test_a_plan_outbid_then_outranked_again_is_contested_not_outbid_back() -> None:
    kube, lease = FakeKube(), _Lease()
    kube.create(GROUP, VERSION, NS, PLURAL, {"apiVersion": f"{GROUP}/{VERSION}",
                                             "kind": KIND, "metadata": {"name": "p"}})
    fences = PlanFences(kube, NS, "me", lease, owns=lambda obj: True, settle=0.0)
    obj = _plan(kube, 20, "unsharded-0")  # left by a deployment before ours
    assert not fences.arriving("p", obj)  # (settle 0: held no time) adopted now
    fences.adopted(obj["status"])
    assert lease.raised == [21]
    obj = _plan(kube, 21, "me")
    assert not fences.arriving("p", obj)
    fences.fence("p")()  # ours: a step may act
    obj = _plan(kube, 22, "unsharded-0")  # its writer still runs and outbid us back
    assert fences.arriving("p", obj)  # left alone, for as long as it is claimed so
    with pytest.raises(LostLease, match="claimed by unsharded-0 too"):
        fences.still_ours("p")  # a refused write does not outbid it either
    with pytest.raises(LostLease, match="written by a newer leader"):
        fences.fence("p")()
    assert lease.raised == [21]
    fences.entered(obj)  # it left our shard and came back: a new arrival, outbid once
    assert not fences.arriving("p", obj)
    fences.adopted(obj["status"])
    assert lease.raised == [21, 23]
    lease.held = 0  # our Lease was deleted and created again: its count restarted
    obj = _plan(kube, 24, "unsharded-0")
    fences.still_ours("p")  # not contested: our own count restarted, not a rival's bid


def test_fence_checks_read_the_lease_on_one_thread_not_one_each() -> None:
    kube = FakeKube()
    elector = _leader(kube)
    read = kube.get_lease
    readers: list[threading.Thread] = []

    def reading(*args: Any, **kwargs: Any) -> Lease | None:
        readers.append(threading.current_thread())
        return read(*args, **kwargs)

    kube.get_lease = reading  # type: ignore[method-assign]
    for _ in range(20):
        elector.fence()
    assert len(readers) == 20 and len(set(readers)) == 1, readers
    assert readers[0] is not threading.current_thread() and readers[0].daemon

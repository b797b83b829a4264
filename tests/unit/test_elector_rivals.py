"""`controller/elector.py` with `controller/lease_rivals.py`: a replica never leads while
a live operator deployment of another shard layout selects the same plans (an unsharded
one beside sharded ones, or `--shard N/M` with another M); the one that took its Lease
later yields, both starting at once yield to one of them, and the yielder leads once the
other's Lease lapses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import controller.elector
import controller.lease_rivals
from controller.elector import Elector, LeaderConfig
from controller.kube import Lease
from controller.lease_rivals import layout, overlaps
from controller.sharding import HashShard, LabelShard, lease_name
from controller.testing_kube import FakeCluster, FakeKube, Fault

NS = "failover-system"
BASE = "failover-controller"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The electors' monotonic clock, moved by the test."""
    now = [1000.0]
    fake = SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr(controller.elector, "time", fake)
    monkeypatch.setattr(controller.lease_rivals, "time", fake)
    return now


def _elector(cluster: FakeCluster, identity: str, shard: HashShard | None) -> Elector:
    config = LeaderConfig(lease_name=lease_name(BASE, shard), lease_duration=3,
                          renew_deadline=2, retry_period=0.3)
    return Elector(FakeKube(cluster, name=identity), NS, identity, config, base=BASE)


def _holder(cluster: FakeCluster, name: str) -> str | None:
    lease = FakeKube(cluster).get_lease(NS, name)
    return lease.holder if lease is not None else None


def test_a_leases_name_says_which_layouts_overlap() -> None:
    def of(shard: HashShard | LabelShard | None) -> int | None:
        return layout(BASE, lease_name(BASE, shard))

    unsharded, two, three = of(None), of(HashShard(0, 2)), of(HashShard(2, 3))
    payments, rest = of(LabelShard("failover.example.io/shard", "payments")), of(
        LabelShard("failover.example.io/shard", None))
    assert None not in (unsharded, two, three, payments, rest)
    assert of(HashShard(1, 2)) == two and layout(BASE, "another-controller") is None
    assert unsharded is not None and two is not None and three is not None
    assert payments is not None and rest is not None
    for other in (two, three, payments):
        assert overlaps(unsharded, other) and overlaps(other, unsharded)
    assert overlaps(two, three) and overlaps(two, payments)
    assert not overlaps(two, two)  # 0/2 beside 1/2: disjoint shards of one layout
    assert not overlaps(payments, rest)  # selector groups are chosen disjoint


def test_a_replica_of_another_layout_yields_to_the_live_deployment_and_says_why(
        clock: list[float]) -> None:
    cluster = FakeCluster()
    unsharded = _elector(cluster, "unsharded-a", None)
    assert unsharded.round()
    sharded = _elector(cluster, "shard0-a", HashShard(0, 2))
    assert not sharded.round()
    assert not sharded.leading() and _holder(cluster, sharded.config.lease_name) is None
    assert sharded.rival is not None and sharded.rival.lease == BASE
    why = sharded.why_not()
    assert "shard0-a does not act on plans" in why and "held by unsharded-a" in why
    assert "Stop one of the two deployments" in why
    events = cluster.events_about(BASE, "AnotherDeploymentSelectsThesePlans")
    assert len(events) == 1 and events[0]["type"] == "Warning"
    clock[0] += 1
    assert unsharded.round() and not sharded.round()  # said once, still yielding
    assert len(cluster.events_about(BASE)) == 1
    # shards of one layout never yield to each other
    other = _elector(cluster, "shard1-a", HashShard(1, 2))
    assert not other.round() and other.rival is not None and other.rival.lease == BASE


def test_shards_of_one_layout_both_lead_and_a_standby_is_not_yielding(
        clock: list[float]) -> None:
    cluster = FakeCluster()
    first, second = (_elector(cluster, f"shard{k}-a", HashShard(k, 2)) for k in range(2))
    assert first.round() and second.round()
    standby = _elector(cluster, "shard0-b", HashShard(0, 2))
    assert not standby.round() and standby.rival is None


def test_the_yielder_leads_once_the_other_lease_lapses(clock: list[float]) -> None:
    cluster = FakeCluster()
    unsharded = _elector(cluster, "unsharded-a", None)
    assert unsharded.round()
    sharded = _elector(cluster, "shard0-a", HashShard(2, 3))
    assert not sharded.round()
    clock[0] += 2.9  # the unsharded replica died: its Lease unchanged since
    assert not sharded.round()
    clock[0] += 0.2  # unchanged for its duration (3 s) on our clock: lapsed
    assert sharded.round() and sharded.rival is None
    assert _holder(cluster, sharded.config.lease_name) == "shard0-a"


def test_both_taking_their_lease_at_once_ends_with_one_leader(clock: list[float]) -> None:
    # Each looked before the other took its Lease, so both take theirs; each looks again
    # before acting, sees the other's, and releases its own. The one whose Lease's name
    # sorts first tries again at the next round; the other a Lease duration later, by
    # when it sees the first one's Lease live and goes on yielding.
    cluster = FakeCluster()
    unsharded = _elector(cluster, "unsharded-a", None)
    sharded = _elector(cluster, "shard0-a", HashShard(0, 2))
    kube = unsharded.kube
    acquire, release = kube.acquire_lease, kube.release_lease
    taken: list[Lease] = []

    def both_take(*args: Any, **kwargs: Any) -> Lease | None:
        lease = acquire(*args, **kwargs)
        taken.append(sharded.kube.acquire_lease(  # the sharded replica takes its own
            NS, sharded.config.lease_name, holder="shard0-a", duration_seconds=3))
        return lease

    def look_then_release(lease: Lease, **kwargs: Any) -> Lease:
        # the sharded replica's second look, as the unsharded one's sees its Lease
        assert not sharded._unopposed(took=taken[0])
        return release(lease, **kwargs)

    kube.acquire_lease = both_take  # type: ignore[method-assign]
    kube.release_lease = look_then_release  # type: ignore[method-assign]
    assert not unsharded.round()
    kube.acquire_lease, kube.release_lease = acquire, release  # type: ignore[method-assign]
    assert _holder(cluster, BASE) is None
    assert _holder(cluster, sharded.config.lease_name) is None
    assert unsharded.rival is not None and sharded.rival is not None
    clock[0] += 0.3
    assert not sharded.round()  # waits a Lease duration
    assert unsharded.round() and unsharded.rival is None
    clock[0] += 3.0
    assert not sharded.round() and sharded.rival is not None
    assert unsharded.round()


def test_a_replica_that_cannot_list_the_leases_does_not_lead(clock: list[float]) -> None:
    cluster = FakeCluster()
    sharded = _elector(cluster, "shard0-a", HashShard(0, 2))
    cluster.inject(Fault("list", times=1))
    assert not sharded.round() and _holder(cluster, sharded.config.lease_name) is None
    assert sharded.round()

"""`controller/sharding.py`: which shard a FailoverPlan is in (issue 20, sharding)."""

from __future__ import annotations

import collections
import re

import pytest

from controller.operator import LeaderConfig
from controller.sharding import (
    SHARD_LABEL,
    HashShard,
    LabelShard,
    ShardError,
    bucket,
    lease_name,
    parse_selector,
    parse_shard,
)

NAMES = [f"team-{i % 37}/plan-{i}" for i in range(10_000)]


def test_the_hash_is_stable_across_processes_and_releases() -> None:
    # fixed values: a change would move plans between shards on an upgrade
    keys = ("failover/shop", "failover/checkout", "team-a/payments")
    assert [bucket(k, 4) for k in keys] == [0, 1, 2]
    assert [bucket(k, 10) for k in keys] == [0, 9, 2]
    assert bucket("anything", 1) == 0
    with pytest.raises(ValueError, match="at least 1"):
        bucket("x", 0)


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_ten_thousand_plans_spread_evenly(count: int) -> None:
    sizes = collections.Counter(bucket(k, count) for k in NAMES)
    assert set(sizes) == set(range(count))
    even = len(NAMES) / count
    assert all(abs(n - even) < 0.06 * even for n in sizes.values()), sizes


def test_one_more_shard_moves_only_its_share_of_the_plans() -> None:
    moved = sum(bucket(k, 4) != bucket(k, 5) for k in NAMES)
    assert moved / len(NAMES) == pytest.approx(1 / 5, abs=0.02)
    assert all(bucket(k, 5) == 4 for k in NAMES if bucket(k, 4) != bucket(k, 5))


def test_each_plan_is_in_exactly_one_shard() -> None:
    shards = [HashShard(i, 3) for i in range(3)]
    for key in NAMES[:2000]:
        ns, name = key.split("/")
        assert sum(s.owns(ns, name, {}) for s in shards) == 1


def test_a_label_wins_over_the_hash() -> None:
    shards = [HashShard(0, 2), HashShard(1, 2)]
    ns, name = "failover", "shop"
    by_hash = bucket(f"{ns}/{name}", 2)
    other = 1 - by_hash
    assert shards[by_hash].owns(ns, name, {})
    assert shards[other].owns(ns, name, {SHARD_LABEL: str(other)})
    assert not shards[by_hash].owns(ns, name, {SHARD_LABEL: str(other)})
    # a label naming none of the shards never orphans a plan: the hash decides
    for typo in ("2", "one", "-1", ""):
        assert shards[by_hash].owns(ns, name, {SHARD_LABEL: typo}), typo
        assert not shards[other].owns(ns, name, {SHARD_LABEL: typo}), typo


def test_a_label_shard_takes_the_plans_labelled_so_or_the_unlabelled() -> None:
    payments = parse_selector(f"{SHARD_LABEL}=payments")
    rest = parse_selector(f"!{SHARD_LABEL}")
    assert payments == LabelShard(SHARD_LABEL, "payments")
    assert payments.label_selector == f"{SHARD_LABEL}=payments"
    assert rest.label_selector == f"!{SHARD_LABEL}"
    labelled, unlabelled, other = {SHARD_LABEL: "payments"}, {}, {SHARD_LABEL: "shop"}
    assert [payments.owns("ns", "p", x) for x in (labelled, unlabelled, other)] == [
        True, False, False]
    assert [rest.owns("ns", "p", x) for x in (labelled, unlabelled, other)] == [
        False, True, False]


def test_one_lease_per_shard() -> None:
    base = LeaderConfig().lease_name
    assert lease_name(base, None) == base
    names = [lease_name(base, s) for s in (
        parse_shard("0/2"), parse_shard("1/2"), parse_shard("0/3"),
        parse_selector(f"{SHARD_LABEL}=a"), parse_selector(f"{SHARD_LABEL}=A"),
        parse_selector("team=a"), parse_selector(f"!{SHARD_LABEL}"),
        parse_selector(f"{SHARD_LABEL}=unlabelled"))]
    assert names[:4] == [f"{base}-shard-0-of-2", f"{base}-shard-1-of-2",
                         f"{base}-shard-0-of-3", f"{base}-shard-a"]
    assert len(set(names)) == len(names), names
    dns = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert all(re.match(dns, n) and len(n) <= 253 for n in names), names


@pytest.mark.parametrize(("text", "says"), [
    ("2/2", "0 <= N < M"), ("1", "expected N/M"), ("a/2", "expected N/M"),
    ("0/0", "expected N/M"), ("-1/2", "expected N/M")])
def test_a_bad_shard_says_the_form(text: str, says: str) -> None:
    with pytest.raises(ShardError, match=says) as err:
        parse_shard(text)
    assert "--shard" in str(err.value)


@pytest.mark.parametrize(("text", "says"), [
    ("payments", "expected KEY=VALUE"), (f"{SHARD_LABEL}=", "not a label value"),
    (f"{SHARD_LABEL}=a b", "not a label value"), ("bad key=a", "not a label key"),
    ("!", "not a label key")])
def test_a_bad_selector_says_the_form(text: str, says: str) -> None:
    with pytest.raises(ShardError, match=says) as err:
        parse_selector(text)
    assert "--shard-selector" in str(err.value) and "!KEY" in str(err.value)

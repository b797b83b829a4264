"""Which operator replicas reconcile which FailoverPlan when the operator is sharded.

One replica (with a standby) reconciles every plan of its namespace until the plans
outgrow it (tests/benchmarks/bench_operator.py measures one replica). Past that, replicas
take a shard, as Flux and Argo CD shard their controllers, and each shard elects its own
leader on its own Lease (`lease_name`), so a shard's plans are reconciled by exactly one
replica — the one leading that shard — and a shard whose leader dies moves to another
replica of that shard, never touching the other shards. A shard is one of:

- `--shard N/M` (`HashShard`): shard N of M (0 <= N < M). A plan labelled
  `failover.example.io/shard: "K"` (0 <= K < M) is in shard K; any other plan (no label,
  or a label that names none of the M shards — a typo never orphans a plan) is placed by
  a stable hash of `namespace/name`: the same on every replica, every Python and every
  restart (SHA-256, never `hash()`, which is salted per process), spread evenly, and a
  jump consistent hash (Lamping & Veach, 2014), so growing M to M+1 moves only 1/(M+1)
  of the plans.
- `--shard-selector KEY=VALUE` (`LabelShard`): the plans labelled so, named by their
  owners (e.g. `failover.example.io/shard=payments`); `!KEY` takes the plans without the
  label, so a replica group can serve what nobody labelled. The API server filters the
  watch (`label_selector`).

A plan that moves to another shard (relabelled, or M changed) changes leader: the new
shard's leader adopts its run from the status and raises its Lease's fencing token above
the one the status carries (`elector.Elector.advance`). The two leaders hold different
Leases; `controller/operator_fence.py` keeps one actor per plan: the old leader's step
stops at its next fence check, and the new leader waits a Lease's duration before acting
on it. Two replica groups must never disagree about M (a 0/2
and a 0/3 leader would both own some plans): change M by stopping every replica, then
starting the new ones (see manifests/deploy/overlays/sharded). The same goes for the
unsharded deployment when moving to shards. Should two groups run at once all the same,
the one that took its Lease later does not lead while the other's Lease is live
(`controller/lease_rivals.py`, `elector.Elector`): it is not ready and says why. Should
two writers claim a plan all the same (two `--shard-selector` groups whose selectors
overlap, which their Leases' names cannot tell), each outbids the other's token on it
at most once; the one outranked after it outbid leaves the plan to the other and logs
that two deployments select it.

Pure: no I/O, no clock; `tests/unit/test_sharding.py`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from controller.crd import GROUP

SHARD_LABEL = f"{GROUP}/shard"
_MULTIPLIER = 2862933555777941757  # the jump hash's 64-bit LCG (Lamping & Veach)
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class ShardError(ValueError):
    """A shard or selector that cannot be used; the message names the option and the form."""


class Shard(Protocol):
    """The plans one group of replicas reconciles."""

    @property
    def name(self) -> str:
        """Names the shard in its Lease's name and in logs (lowercase, DNS-safe)."""
        ...

    @property
    def label_selector(self) -> str | None:
        """What the API server can filter the watch by (None: every plan is listed)."""
        ...

    def owns(self, namespace: str, name: str, labels: dict[str, str]) -> bool: ...


def bucket(key: str, buckets: int) -> int:
    """A stable bucket in [0, buckets) for `key`: SHA-256's first 8 bytes, then the jump
    consistent hash."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    b, j = -1, 0
    while j < buckets:
        b = j
        h = (h * _MULTIPLIER + 1) % (1 << 64)
        j = int((b + 1) * ((1 << 31) / ((h >> 33) + 1)))
    return b


@dataclass(frozen=True)
class HashShard:
    """Shard `index` of `count`: plans labelled with its index, and the unlabelled (or
    mislabelled) ones the hash of `namespace/name` places in it."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ShardError(f"--shard {self.index}/{self.count}: N/M needs 0 <= N < M "
                             f"(shards are numbered from 0), e.g. 0/{max(self.count, 2)}")

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def label_selector(self) -> str | None:
        return None  # the hash decides for unlabelled plans: every plan is listed

    def of(self, namespace: str, name: str, labels: dict[str, str]) -> int:
        """The shard a plan is in, out of `count`."""
        label = labels.get(SHARD_LABEL, "")
        if label.isdigit() and int(label) < self.count:
            return int(label)
        return bucket(f"{namespace}/{name}", self.count)

    def owns(self, namespace: str, name: str, labels: dict[str, str]) -> bool:
        return self.of(namespace, name, labels) == self.index


@dataclass(frozen=True)
class LabelShard:
    """The plans whose label `key` is `value`; with value None, those without the label."""

    key: str
    value: str | None

    @property
    def name(self) -> str:
        """The value itself when it is a DNS-safe name and the key is `SHARD_LABEL`; else
        a slug and a digest of the selector, so two selectors never share a Lease ("A"
        and "a"; `!KEY` never reads like a value: a slug holds no "--")."""
        if self.value is None:
            return f"unlabelled--{_digest(self.label_selector)}"
        slug = re.sub(r"[^a-z0-9]+", "-", self.value.lower()).strip("-") or "x"
        if slug == self.value and self.key == SHARD_LABEL:
            return slug
        return f"{slug}-{_digest(self.label_selector)}"

    @property
    def label_selector(self) -> str:
        return f"{self.key}={self.value}" if self.value is not None else f"!{self.key}"

    def owns(self, namespace: str, name: str, labels: dict[str, str]) -> bool:
        if self.value is None:
            return self.key not in labels
        return labels.get(self.key) == self.value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def parse_shard(text: str) -> HashShard:
    """`--shard N/M`."""
    index, sep, count = text.strip().partition("/")
    if not (sep and index.isdigit() and count.isdigit()) or int(count) < 1:
        raise ShardError(f"--shard {text!r}: expected N/M, shard N of M counted from 0 "
                         "(e.g. 0/2 and 1/2 for two shards)")
    return HashShard(int(index), int(count))


def parse_selector(text: str) -> LabelShard:
    """`--shard-selector KEY=VALUE` (the plans labelled so) or `!KEY` (the unlabelled)."""
    form = (f"expected KEY=VALUE (the plans labelled so, e.g. {SHARD_LABEL}=payments) or "
            f"!KEY (the plans without the label, e.g. !{SHARD_LABEL})")
    text = text.strip()
    if text.startswith("!"):
        key, value = text[1:], None
    else:
        key, sep, value = text.partition("=")
        if not sep:
            raise ShardError(f"--shard-selector {text!r}: {form}")
    if not _LABEL_KEY.match(key):
        raise ShardError(f"--shard-selector {text!r}: {key!r} is not a label key; {form}")
    if value is not None and not (value and _LABEL_VALUE.match(value)):
        raise ShardError(f"--shard-selector {text!r}: {value!r} is not a label value (up "
                         "to 63 letters, digits, '-', '_' or '.', starting and ending with "
                         f"a letter or digit); {form}")
    return LabelShard(key, value)


def lease_name(base: str, shard: Shard | None) -> str:
    """The Lease a shard's replicas elect their leader on: one per shard; `base` when
    the operator is not sharded."""
    return base if shard is None else f"{base}-shard-{shard.name}"

"""Another operator deployment that selects the same plans: found by its Lease.

Owns telling, from the Leases of a namespace, whether a replica group of another shard
layout is live there — an unsharded deployment left running beside sharded ones, or two
groups started with different M in `--shard N/M` — so that the Elector
(`controller/elector.py`) lets at most one of them act on plans. Two such groups each
hold their own Lease, so the Leases alone would let both act on one plan; the per-plan
fencing tokens (`controller/operator_fence.py`) only bound the damage, and their first
exchange can leave a run half done between the two.

A Lease's name says its layout (`sharding.lease_name`): the base (`failover-controller`)
is the unsharded deployment, which selects every plan; `BASE-shard-N-of-M` is shard N of
M, which overlaps every shard of another M; any other `BASE-shard-NAME` is a
`--shard-selector` group, which overlaps unsharded and `--shard` groups (selector groups
are chosen disjoint by their owners). Leases of other bases are other controllers'.

A Lease is live when it is held and this replica has seen it change within its
`leaseDurationSeconds` on its own clock (the Elector's rule for its own Lease; a Lease
first seen counts as just changed), so clocks are never compared across machines.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from controller import kube as k8s

_HASH = re.compile(r"(\d+)-of-(\d+)")
_ALL = 0  # the layout of an unsharded deployment (`Layout.count`)
_SELECTOR = -1  # of a `--shard-selector` group


@dataclass(frozen=True)
class Rival:
    """A live Lease of another layout that overlaps ours."""

    lease: str
    holder: str
    obj: k8s.Obj  # the Lease as listed (for an Event about it)


def layout(base: str, name: str) -> int | None:
    """The layout a Lease's name says: M for `--shard N/M`, `_ALL` for the unsharded
    deployment, `_SELECTOR` for a `--shard-selector` group; None: not an operator Lease
    of this base."""
    if name == base:
        return _ALL
    prefix = f"{base}-shard-"
    if not name.startswith(prefix):
        return None
    matched = _HASH.fullmatch(name[len(prefix):])
    return int(matched.group(2)) if matched else _SELECTOR


def overlaps(ours: int, theirs: int) -> bool:
    """Whether two layouts (of two different Leases) can select the same plan."""
    if _ALL in (ours, theirs):
        return True
    return ours != theirs and not (ours == _SELECTOR == theirs)


class RivalLeases:
    """The namespace's Leases as this replica sees them (`look`)."""

    def __init__(self, kube: k8s.KubeAPI, namespace: str, base: str, own: str):
        self.kube, self.namespace, self.base, self.own = kube, namespace, base, own
        ours = layout(base, own)
        if ours is None:
            raise ValueError(f"lease {own!r} is not named after {base!r} "
                             "(`sharding.lease_name`)")
        self._layout = ours
        # Lease name -> (resourceVersion, time.monotonic() when first seen so)
        self._seen: dict[str, tuple[str, float]] = {}

    def look(self, identity: str) -> Rival | None:
        """A live Lease of an overlapping layout, listed now; None when there is none, or
        when our own Lease is live and held by another replica of our group (a standby:
        its leader looked before it acted). KubeError or ConnectionError when the list
        fails (the caller then does not act)."""
        now = time.monotonic()
        listed = self.kube.list("coordination.k8s.io", "v1", self.namespace, "leases").items
        live: list[tuple[k8s.Lease, k8s.Obj]] = []
        seen: dict[str, tuple[str, float]] = {}
        for obj in listed:
            lease = k8s.Lease.from_object(obj)
            at = self._seen.get(lease.name)
            if at is None or at[0] != lease.resource_version:
                at = (lease.resource_version, now)
            seen[lease.name] = at
            if lease.holder is not None and now - at[1] < lease.duration_seconds:
                live.append((lease, obj))
        self._seen = seen
        rivals = []
        for lease, obj in live:
            if lease.name == self.own:
                if lease.holder != identity:
                    return None  # our group's leader holds it: it looked
                continue
            theirs = layout(self.base, lease.name)
            if theirs is not None and overlaps(self._layout, theirs):
                rivals.append(Rival(lease.name, lease.holder or "", obj))
        return min(rivals, key=lambda r: r.lease, default=None)

"""One actor per plan when plans move between shards: the plan's fence and its arrival.

Owns what keeps a FailoverPlan relabelled from one shard to another (`kubectl label`,
`controller/sharding.py`) acted on by one leader, whenever it moves — mid-run or just as
it trips. Each shard elects its leader on its own Lease, so the old shard's leader keeps
its Lease after the move and the two Leases count their fencing tokens apart: neither
the Lease nor the token alone tells a leader that a plan is no longer its own. Why each
rule:

- **A step acts only while its plan is ours** (`PlanFences.fence`, each plan engine's
  fence): the Lease check (`Elector.fence`), then the plan read afresh: gone, left our
  shard, or its status written under a token that outranks ours (`_outranks`) raises
  `LostLease`, so the old leader's running step is cancelled at its next fence check.
  The read runs only when a step acts (before it starts, and every `guard_every` while
  its work runs: the executor's renewals), never on a quiet plan's tick. A read that
  fails goes on: the Lease check just said we are within the renew deadline.
- **Never outbid for a plan that left** (`PlanFences.still_ours`): a write refused for a
  newer stored token raises our token above it only while the plan, read now, is still
  in our shard; otherwise the old leader would outrank the new one and take it back.
- **An arrival takes a Lease's duration to settle** (`PlanFences.arriving`): a plan that
  the watch saw enter our shard with a status another replica wrote (`entered`; not in
  our first list: a plan of our shard is in it), or whose status was written under a
  token that outranks ours (another shard's leader, whose token counts apart from ours,
  when we missed its arrival), is left alone — no finalizer, no status, no step — for
  `lease_duration` after we first see it so. By then the old leader has stopped: its
  step's fence fails at its next check once it reads the plan, and a leader cut off the
  API server stops leading `renew_deadline` after its last renewal. A plan of our own
  shard is never held when we take the Lease over: its status is our shard's earlier
  leaders', under smaller tokens, and the Lease's expiry has already been waited out.
- **Then our token is raised above the stored one** (`PlanFences.adopted`, when the run
  is adopted from the status), so the old leader's writes are refused from our first
  write on (the stored token is larger than its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from controller import kube as k8s
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.fencing import LostLease


class LeaseHolder(Protocol):
    """The replica's side of its shard's Lease (`operator.Elector`)."""

    def fence(self) -> None: ...

    def token(self) -> int: ...

    def advance(self, at_least: int) -> int: ...


class PlanFences:
    """The per-plan rules of one replica (see the module docstring)."""

    def __init__(self, kube: k8s.KubeAPI, namespace: str, identity: str, lease: LeaseHolder,
                 owns: Callable[[dict[str, Any]], bool], settle: float):
        self.kube, self.namespace, self.identity, self.lease = kube, namespace, identity, lease
        self.owns, self.settle = owns, settle  # settle: the Lease's duration
        # plan name -> (`_key` of the plan held, time.monotonic() when first seen so)
        self._arrived: dict[str, tuple[tuple[Any, ...], float]] = {}

    def fence(self, name: str) -> Callable[[], None]:
        """The engine's fence for plan `name`."""
        return partial(self._check, name)

    def _check(self, name: str) -> None:
        self.lease.fence()
        try:
            obj = self.kube.get(GROUP, VERSION, self.namespace, PLURAL, name)
        except k8s.NotFound:
            raise LostLease(f"{KIND} {name} is gone") from None
        except (k8s.KubeError, ConnectionError, TimeoutError):
            return  # the Lease check just said we are within the renew deadline
        if not self.owns(obj):
            raise LostLease(f"{KIND} {name} has left this replica's shard")
        if self._outranks(obj.get("status") or {}) is not None:
            raise LostLease(f"{KIND} {name}'s status was written by a newer leader")

    def still_ours(self, name: str) -> None:
        """Before raising our token above a stored one: LostLease unless the plan, read
        now, is still in our shard."""
        try:
            obj = self.kube.get(GROUP, VERSION, self.namespace, PLURAL, name)
        except (k8s.KubeError, ConnectionError) as exc:
            raise LostLease(f"{KIND} {name} not read before raising the fencing token: "
                            f"{exc}") from None
        if not self.owns(obj):
            raise LostLease(f"{KIND} {name} has left this replica's shard; its new "
                            "shard's leader is not outbid")

    def entered(self, *objs: dict[str, Any]) -> None:
        """The watch saw these plans enter our shard (created, or moved in): one whose
        status another replica wrote is held (`arriving`) from now."""
        for obj in objs:
            if (obj.get("status") or {}).get("fencingHolder") not in (None, self.identity):
                self._arrived[obj["metadata"]["name"]] = (_key(obj), time.monotonic())

    def arriving(self, name: str, obj: dict[str, Any]) -> bool:
        """The plan entered our shard, or its status outranks our token, less than a
        Lease's duration ago (the status unchanged since): leave it alone for now."""
        seen = self._arrived.get(name)
        if seen is None or seen[0] != _key(obj):
            if self._outranks(obj.get("status") or {}) is None:
                self._arrived.pop(name, None)
                return False
            seen = self._arrived[name] = (_key(obj), time.monotonic())
        return time.monotonic() - seen[1] < self.settle

    def adopted(self, status: dict[str, Any]) -> None:
        """A plan adopted from its status: raise our token above the stored one when it
        outranks ours, so from our first write on the old leader's writes are refused."""
        stored = self._outranks(status)
        if stored is not None:
            self.lease.advance(stored + 1)

    def _outranks(self, status: dict[str, Any]) -> int | None:
        """The status's fencing token when it is larger than ours, or equal and another
        holder's (each shard's Lease counts from 0); else None."""
        try:
            stored = int(status.get("fencingToken", ""))
        except (TypeError, ValueError):
            return None
        ours = self.lease.token()
        if stored > ours or (stored == ours and status.get("fencingHolder") != self.identity):
            return stored
        return None


def _key(obj: dict[str, Any]) -> tuple[Any, ...]:
    """Which object, and whose status: what a hold is for."""
    status = obj.get("status") or {}
    return obj["metadata"].get("uid"), status.get("fencingHolder"), status.get("fencingToken")

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
- **Outbid once per arrival** (`_outbid`, `_contested`): a plan whose status outranks
  our token again after we outbid it — and has not left our shard since — is claimed by
  a writer that still runs: an unsharded deployment beside the sharded one, or two shard
  layouts (`--shard N/M` with different M). Outbidding it back would start a war (each
  side's write refused, each raising its Lease by one more, the plan changing hands at
  every arrival hold, both Leases' `leaseTransitions` climbing for as long as both run),
  so it is left to the other writer, with a warning that says to stop one deployment.
  (Two shard layouts of one Lease base never act at once: the later one yields,
  `controller/lease_rivals.py`; this bounds what that cannot see: two `--shard-selector`
  groups whose selectors overlap.)
  A raise of our own Lease's count (created again: our token falls below the one we
  outbid with) is no rival's claim. A plan that leaves our shard and comes back may be
  outbid once more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from controller import kube as k8s
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.fencing import LostLease

log = logging.getLogger(__name__)


class LeaseHolder(Protocol):
    """The replica's side of its shard's Lease (`elector.Elector`)."""

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
        # plan name -> the token we raised ours to, to outbid its status, since it last
        # entered our shard: outranked again, it is contested (`_contested`)
        self._outbid: dict[str, int] = {}
        self._settled: set[tuple[Any, int]] = set()  # (holder, token) of statuses that
        # settled (`arriving`): the only ones `adopted` outbids

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
        status = obj.get("status") or {}
        if self._contested(name, status):
            raise LostLease(self._claimed(name, status))
        stored = self._outranks(status)
        if stored is not None:
            self._outbid[name] = stored + 1

    def entered(self, *objs: dict[str, Any]) -> None:
        """The watch saw these plans enter our shard (created, or moved in): one whose
        status another replica wrote is held (`arriving`) from now."""
        for obj in objs:
            name = obj["metadata"]["name"]
            self._outbid.pop(name, None)  # a new arrival: its old leader is outbid once
            if (obj.get("status") or {}).get("fencingHolder") not in (None, self.identity):
                self._arrived[name] = (_key(obj), time.monotonic())

    def arriving(self, name: str, obj: dict[str, Any]) -> bool:
        """The plan entered our shard, or its status outranks our token, less than a
        Lease's duration ago (the status unchanged since), or it is contested: leave it
        alone for now."""
        status = obj.get("status") or {}
        if self._contested(name, status):
            if self._arrived.get(name, (None,))[0] != _key(obj):  # said once per status
                log.warning("%s", self._claimed(name, status))
                self._arrived[name] = (_key(obj), time.monotonic())
            return True
        stored = self._outranks(status)
        seen = self._arrived.get(name)
        if seen is None or seen[0] != _key(obj):
            if stored is None:
                self._arrived.pop(name, None)
                return False
            seen = self._arrived[name] = (_key(obj), time.monotonic())
        if time.monotonic() - seen[1] < self.settle:
            return True
        if stored is not None:  # settled: adopted now (`adopted`), its writer outbid
            self._outbid[name] = stored + 1
            self._settled.add((status.get("fencingHolder"), stored))
        return False

    def adopted(self, status: dict[str, Any]) -> None:
        """A plan adopted from its status: raise our token above the stored one when it
        outranks ours, so from our first write on the old leader's writes are refused —
        only when that status settled (`arriving`): one written since is left to the next
        reconcile's `arriving` (a rival's claim is held there, not outbid here)."""
        stored = self._outranks(status)
        if stored is None:
            return
        holder = status.get("fencingHolder")
        if (holder, stored) not in self._settled:
            raise LostLease(f"the {KIND}'s status to adopt was written by {holder} (fencing "
                            f"token {stored}) after it had settled; the next reconcile "
                            "waits for it to settle")
        self.lease.advance(stored + 1)

    def _contested(self, name: str, status: dict[str, Any]) -> bool:
        """Another holder's token outranks ours on a plan whose status we have outbid
        since it entered our shard (and our Lease has not restarted its count since):
        its writer still claims it."""
        mark = self._outbid.get(name)
        return (mark is not None and self._outranks(status) is not None
                and status.get("fencingHolder") != self.identity
                and self.lease.token() >= mark)

    def _claimed(self, name: str, status: dict[str, Any]) -> str:
        return (f"{KIND} {self.namespace}/{name} is claimed by {status.get('fencingHolder')} "
                f"too (fencing token {status.get('fencingToken')}, written after "
                f"{self.identity} had outbid it): two operator deployments select it "
                "(an unsharded one beside sharded ones, or two --shard N/M with different "
                "M); it is left to the other one — stop one of them")

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

"""What the controller asks of a Kubernetes API server, apart from how it is reached.

Owns the records an API conversation yields (`ObjectList`, `WatchEvent`, `Lease`), the
writer's `Fencing`, the `KubeAPI` Protocol the operator uses, and `ClientRules`: the
conflict-retried, fenced updates and the Lease election that the controller keeps on top
of an API server's plain verbs (the rules are explained in `controller.kube`). Kept apart
from `controller.kube`, which speaks HTTP to a server, so that the simulation's
`controller.testing_kube.FakeKube` inherits the very same rules without any HTTP: the
fake differs from `Kube` only in the server it talks to.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

from controller.kube_errors import (
    AlreadyExists,
    Conflict,
    LeaseHeld,
    LeaseLost,
    StaleFencingToken,
    _ref,
)

Obj = dict[str, Any]
Mutation = Callable[[Obj], Obj | None]


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Obj
    resource_version: str


@dataclass(frozen=True, slots=True)
class Fencing:
    """A writer's fencing token and holder (a leader's Lease `leaseTransitions` and its
    identity). A write that carries it is refused when the object's `status.fencingToken`
    is larger; a status written with it carries both, so the next leader's token fences
    this one out."""

    token: int
    holder: str

    def stamp(self) -> dict[str, Any]:
        return {"fencingToken": self.token, "fencingHolder": self.holder}

    def check(self, obj: Obj, what: str) -> None:
        """Raise StaleFencingToken when `obj` (as just read) carries a larger token."""
        status = obj.get("status") or {}
        try:
            stored = int(status.get("fencingToken", ""))
        except (TypeError, ValueError):
            return  # none yet (or not a number): nothing newer to protect
        if stored > self.token:
            holder = status.get("fencingHolder")
            raise StaleFencingToken(
                f"Kubernetes API: {what}: not written: its status.fencingToken is {stored} "
                f"(written by {holder or 'unknown'}), newer than this writer's {self.token} "
                f"({self.holder}); another controller has led since, so this one must stop "
                "acting", stored=stored, stored_holder=holder)


def copy_json(value: Any) -> Any:
    """A deep copy of an API object (JSON data held in memory, never data read from
    outside): several times faster than `copy.deepcopy` on the operator's statuses,
    which carry a run and a spec."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def _micro(when: dt.datetime) -> str:
    """MicroTime as the API server parses it: RFC 3339, always 6 fraction digits, UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class Lease:
    """A coordination.k8s.io/v1 Lease as last read or written."""

    namespace: str
    name: str
    holder: str | None
    duration_seconds: int
    acquire_time: dt.datetime | None
    renew_time: dt.datetime | None
    transitions: int
    resource_version: str

    @classmethod
    def from_object(cls, obj: Obj) -> Lease:
        meta, spec = obj.get("metadata", {}), obj.get("spec", {}) or {}
        return cls(meta.get("namespace", ""), meta.get("name", ""),
                   spec.get("holderIdentity") or None, int(spec.get("leaseDurationSeconds") or 0),
                   _parse_time(spec.get("acquireTime")), _parse_time(spec.get("renewTime")),
                   int(spec.get("leaseTransitions") or 0), str(meta.get("resourceVersion", "")))

    def expires_at(self) -> dt.datetime | None:
        if self.renew_time is None:
            return None
        return self.renew_time + dt.timedelta(seconds=self.duration_seconds)

    def expired(self, now: dt.datetime) -> bool:
        """True when nobody holds it, or the holder has not renewed within the duration."""
        end = self.expires_at()
        return self.holder is None or end is None or now >= end

    def held_by(self, identity: str, now: dt.datetime) -> bool:
        return self.holder == identity and not self.expired(now)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lease_body(namespace: str, name: str, holder: str, duration_seconds: int,
               now: dt.datetime) -> dict[str, Any]:
    """A new Lease held by `holder` since `now` (its first holder: no transitions yet)."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_seconds,
                     "acquireTime": _micro(now), "renewTime": _micro(now),
                     "leaseTransitions": 0}}


class KubeAPI(Protocol):
    """What the operator (`Operator`, `Elector`) asks of the API server; `Kube` is the
    real one, `controller.testing_kube.FakeKube` the simulation's."""

    timeout: float

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj: ...

    def list(self, group: str, version: str, namespace: str | None, plural: str, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList: ...

    def watch(self, group: str, version: str, namespace: str | None, plural: str, *,
              resource_version: str, timeout_seconds: int = 300,
              label_selector: str | None = None, field_selector: str | None = None,
              bookmarks: bool = True) -> Iterator[WatchEvent]: ...

    def update(self, group: str, version: str, namespace: str, plural: str, name: str,
               mutate: Mutation, *, current: Obj | None = None,
               fencing: Fencing | None = None) -> Obj: ...

    def update_status(self, group: str, version: str, namespace: str, plural: str,
                      name: str, mutate: Mutation, *, current: Obj | None = None,
                      fencing: Fencing | None = None) -> Obj: ...

    def read_secret(self, namespace: str, name: str, key: str) -> bytes: ...

    def emit_event(self, involved: Obj, *, reason: str, message: str, type: str = "Normal",
                   action: str = "", component: str = "failover-controller",
                   instance: str = "") -> Obj: ...

    def count_event(self, event: Obj, count: int) -> Obj: ...

    def get_lease(self, namespace: str, name: str, *,
                  timeout: float | None = None) -> Lease | None: ...

    def acquire_lease(self, namespace: str, name: str, *, holder: str,
                      duration_seconds: int, now: dt.datetime | None = None,
                      expired: Callable[[Lease], bool] | None = None) -> Lease | None: ...

    def advance_lease(self, lease: Lease, *, transitions: int) -> Lease: ...

    def release_lease(self, lease: Lease, *, now: dt.datetime | None = None) -> Lease: ...


class ClientRules:
    """The rules the controller keeps on top of an API server's plain verbs, shared by
    `Kube` and `controller.testing_kube.FakeKube` (so the fake differs from the real
    client only in what the server does): conflict-retried, fenced updates and Lease
    election. A subclass gives the verbs: `get`, `replace`, `replace_status`,
    `get_lease`, `create_lease`, `_write_lease`, and `clock`."""

    conflict_retries: int = 8
    conflicts: int = 0  # 409s met (and retried) by update/update_status: for metrics
    conflict_wait: wait_base = wait_random_exponential(multiplier=0.02, max=0.5)
    clock: Callable[[], dt.datetime]

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        raise NotImplementedError

    def replace(self, group: str, version: str, namespace: str, plural: str,
                body: Obj) -> Obj:
        raise NotImplementedError

    def replace_status(self, group: str, version: str, namespace: str, plural: str,
                       body: Obj) -> Obj:
        raise NotImplementedError

    def get_lease(self, namespace: str, name: str, *,
                  timeout: float | None = None) -> Lease | None:
        raise NotImplementedError

    def create_lease(self, namespace: str, name: str, *, holder: str,
                     duration_seconds: int, now: dt.datetime | None = None) -> Lease:
        raise NotImplementedError

    def _write_lease(self, lease: Lease, spec: dict[str, Any]) -> Lease:
        raise NotImplementedError

    def _update(self, group: str, version: str, namespace: str, plural: str, name: str,
                mutate: Mutation, *, status: bool, current: Obj | None,
                fencing: Fencing | None) -> Obj:
        known = [current] if current is not None else []

        def attempt() -> Obj:
            # the first try may start from a copy the caller holds; a retry always re-reads
            current = known.pop() if known else self.get(group, version, namespace, plural,
                                                         name)
            if fencing is not None:  # on every try, against what was just read
                fencing.check(current, f"update {_ref(group, plural, namespace, name)}")
            draft = copy_json(current)
            result = mutate(draft)
            desired = draft if result is None else result
            if fencing is not None and status:
                desired["status"] = {**(desired.get("status") or {}), **fencing.stamp()}
            if desired == current:
                return current  # nothing to change: no write, idempotent
            desired.setdefault("metadata", {})["resourceVersion"] = \
                current["metadata"]["resourceVersion"]
            try:
                if status:
                    return self.replace_status(group, version, namespace, plural, desired)
                return self.replace(group, version, namespace, plural, desired)
            except Conflict:
                self.conflicts += 1
                raise

        try:
            for try_ in Retrying(stop=stop_after_attempt(self.conflict_retries),
                                 retry=retry_if_exception_type(Conflict),
                                 wait=self.conflict_wait,
                                 reraise=True):
                with try_:
                    return attempt()
        except Conflict as exc:
            raise Conflict(f"Kubernetes API: update {_ref(group, plural, namespace, name)}: "
                           f"still conflicting after {self.conflict_retries} re-read and "
                           "re-apply attempts (the object keeps changing); retry later",
                           reason=exc.reason) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def update(self, group: str, version: str, namespace: str, plural: str, name: str,
               mutate: Mutation, *, current: Obj | None = None,
               fencing: Fencing | None = None) -> Obj:
        """Read, `mutate` a copy, write it back with the read resourceVersion.

        `mutate` gets a deep copy of the object and returns the object to write, or None
        when it changed the copy in place. When the result equals what was read nothing
        is written. On 409 Conflict the object is read again and `mutate` re-applied
        (bounded), so a concurrent edit is kept, never overwritten. Exceptions raised by
        `mutate` propagate unchanged (no retry). With `current` (the object as the caller
        last read or wrote it) the first try skips the read: if that copy is stale the
        write is refused and the retry reads afresh, so it is never less safe.

        With `fencing` (the writer's token and holder) every try first compares the token
        with the object's `status.fencingToken` as just read, and raises
        `StaleFencingToken` (nothing written, no retry) when the stored one is larger: a
        deposed leader's re-read and re-apply never overwrites its successor's work.
        """
        return self._update(group, version, namespace, plural, name, mutate, status=False,
                            current=current, fencing=fencing)

    def update_status(self, group: str, version: str, namespace: str, plural: str,
                      name: str, mutate: Mutation, *, current: Obj | None = None,
                      fencing: Fencing | None = None) -> Obj:
        """Like `update`, through the status subresource (only `.status` is written).
        With `fencing` the status written carries `fencingToken` and `fencingHolder`."""
        return self._update(group, version, namespace, plural, name, mutate, status=True,
                            current=current, fencing=fencing)
    # --- leases ----------------------------------------------------------------------------------

    @staticmethod
    def _spec(lease: Lease, **changes: Any) -> dict[str, Any]:
        spec = {"holderIdentity": lease.holder,
                "leaseDurationSeconds": lease.duration_seconds,
                "acquireTime": _micro(lease.acquire_time) if lease.acquire_time else None,
                "renewTime": _micro(lease.renew_time) if lease.renew_time else None,
                "leaseTransitions": lease.transitions}
        spec.update(changes)
        return {k: v for k, v in spec.items() if v is not None}

    def renew_lease(self, lease: Lease, *, now: dt.datetime | None = None,
                    duration_seconds: int | None = None) -> Lease:
        """Move renewTime to `now` (and leaseDurationSeconds to `duration_seconds`, the
        holder's setting, when given), written against the lease's resourceVersion.

        Raises LeaseLost when someone else wrote the lease since it was read (the
        write is refused): the caller must stop acting and re-acquire.
        """
        now = now or self.clock()
        try:
            return self._write_lease(lease, self._spec(
                lease, renewTime=_micro(now),
                leaseDurationSeconds=duration_seconds or lease.duration_seconds))
        except Conflict:
            fresh = self.get_lease(lease.namespace, lease.name)
            holder = fresh.holder if fresh else None
            raise LeaseLost(f"Lease {lease.namespace}/{lease.name}: changed since it was read "
                            f"(now held by {holder or 'nobody'}); stop acting and acquire it "
                            "again", status=409) from None

    def take_over_lease(self, lease: Lease, *, holder: str,
                        duration_seconds: int | None = None,
                        now: dt.datetime | None = None, expired: bool | None = None) -> Lease:
        """Take an expired (or released) lease: holder, acquireTime and renewTime = now,
        leaseTransitions + 1, written against its resourceVersion. LeaseHeld when it
        has not expired or another candidate wrote it first. `expired` is the caller's
        judgement (None: `renewTime + leaseDurationSeconds` against `now`)."""
        now = now or self.clock()
        gone = lease.expired(now) if expired is None else (expired or lease.holder is None)
        if not gone:
            raise LeaseHeld(f"Lease {lease.namespace}/{lease.name} is held by {lease.holder} "
                            f"until {lease.expires_at()}")
        spec = self._spec(lease, holderIdentity=holder, acquireTime=_micro(now),
                          renewTime=_micro(now),
                          leaseDurationSeconds=duration_seconds or lease.duration_seconds,
                          leaseTransitions=lease.transitions + (lease.holder != holder))
        try:
            return self._write_lease(lease, spec)
        except Conflict:
            raise LeaseHeld(f"Lease {lease.namespace}/{lease.name}: another candidate wrote "
                            "it first", status=409) from None

    def release_lease(self, lease: Lease, *, now: dt.datetime | None = None) -> Lease:
        """Give the lease up (holder cleared), so another replica need not wait it out."""
        now = now or self.clock()
        spec = self._spec(lease, renewTime=_micro(now))
        spec.pop("holderIdentity", None)
        try:
            return self._write_lease(lease, spec)
        except Conflict:
            raise LeaseLost(f"Lease {lease.namespace}/{lease.name} changed since it was read; "
                            "not released", status=409) from None

    def advance_lease(self, lease: Lease, *, transitions: int) -> Lease:
        """Raise the holder's `leaseTransitions` (the fencing token) to `transitions`,
        written against the lease's resourceVersion: for a Lease that was deleted and
        created again (its count restarted at 0) while objects still carry larger tokens.
        Raises LeaseLost when the lease changed since it was read."""
        try:
            return self._write_lease(lease, self._spec(
                lease, leaseTransitions=max(lease.transitions, transitions)))
        except Conflict:
            raise LeaseLost(f"Lease {lease.namespace}/{lease.name} changed since it was read; "
                            "its fencing token was not raised", status=409) from None

    def acquire_lease(self, namespace: str, name: str, *, holder: str,
                      duration_seconds: int, now: dt.datetime | None = None,
                      expired: Callable[[Lease], bool] | None = None) -> Lease | None:
        """One leader-election round: create, renew (ours, writing `duration_seconds`),
        or take over (expired as `expired(lease)` judges, or by the clock without it).

        Returns the lease when `holder` holds it afterwards, None when another holder
        has it (or won a race for it this round).
        """
        now = now or self.clock()
        lease = self.get_lease(namespace, name)
        try:
            if lease is None:
                return self.create_lease(namespace, name, holder=holder,
                                         duration_seconds=duration_seconds, now=now)
            if lease.holder == holder:
                return self.renew_lease(lease, now=now, duration_seconds=duration_seconds)
            gone = lease.expired(now) if expired is None else expired(lease)
            if gone:
                return self.take_over_lease(lease, holder=holder,
                                            duration_seconds=duration_seconds, now=now,
                                            expired=gone)
        except (AlreadyExists, LeaseHeld, LeaseLost):
            return None
        return None

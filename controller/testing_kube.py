"""An in-memory Kubernetes API server for the operator: `FakeKube` (a client) over a
`FakeCluster` (the server's state), for unit tests and the safety simulation.

Owns the API server's semantics that the operator's safety rests on, and nothing more:
the part of `controller.kube.Kube` the operator uses (`kube.KubeAPI`) plus the verbs
people and tests use (`create`, `get`, `delete`). Each rule below is held to the real
kube-apiserver by `tests/contract/kube/test_kube_contract.py`, which runs the same
tests against both:

- **Identity**: every create gets a new `uid`; a plan deleted and created again under
  its name is another object.
- **Optimistic concurrency**: every write bumps the cluster-wide `resourceVersion`; a
  write carrying a stale one is refused with `Conflict` (409); an update without one is
  `Invalid` (422, as for custom resources).
- **Generation**: bumped on a change of anything but metadata and status, and once when
  the object is first marked for deletion; never on a status or metadata write.
- **Status subresource** (`failoverplans`): a create or main-resource update ignores
  `.status`; `replace_status` writes `.status` only.
- **Finalizers**: delete of an object with finalizers only sets
  `metadata.deletionTimestamp` (and bumps the generation); no finalizer may be added
  then (`Invalid`); removing the last one removes the object.
- **Leases** (coordination.k8s.io/v1) stored like any object, so the create / renew /
  take-over / release / advance rules and the fencing checks are `kube.ClientRules`'s,
  the very code `Kube` runs.
- **Watch** from a resourceVersion: ADDED / MODIFIED / DELETED, in order (no
  compaction: `Gone` is never answered).
- **Events** created and counted (`FakeCluster.events`).

Faults: `FakeCluster.inject(Fault(...))` answers the next N matching requests with
`Unavailable` (503) without applying them; `FakeKube.cut` cuts one client off the API
server (every request: `Unavailable`, a waiting watch ends). For the simulation, a
client takes `hop` (called before each request: network time, a yield point),
`monotonic` and `wait_until` (how a watch waits for a change), so every blocking point
is the simulated scheduler's.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tenacity import wait_none

from controller.kube import (
    AlreadyExists,
    ClientRules,
    Conflict,
    Invalid,
    Lease,
    NotFound,
    ObjectList,
    Unavailable,
    WatchEvent,
    _micro,
    _utcnow,
    copy_json,
    lease_body,
)
from controller.kube_errors import _ref

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # group, plural, namespace, name
LEASES = ("coordination.k8s.io", "leases")


@dataclass
class Fault:
    """Answer the next `times` requests of `verb` (a FakeKube method: `replace_status`,
    `replace`, `get`, `list`, `watch`, `emit_event`, `get_lease`, ...) on an object named
    `name` (None: any) with 503, applying nothing; `when` (given the request's body,
    None for a read) narrows it further."""

    verb: str
    name: str | None = None
    times: int = 1
    when: Callable[[Obj | None], bool] | None = None
    hits: int = 0


@dataclass
class FakeCluster:
    """The API server's state: objects by (group, plural, namespace, name), the change log
    watches read, Events, Secrets, and injected faults."""

    seed: int = 0
    status_subresource: frozenset[str] = frozenset({"failoverplans"})
    objects: dict[Key, Obj] = field(default_factory=dict)
    # every change: (resourceVersion, ADDED|MODIFIED|DELETED, key, object, the client's name)
    log: list[tuple[int, str, Key, Obj, str]] = field(default_factory=list)
    events: list[Obj] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    rv: int = 1
    latest: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, plural) -> rv

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._ids = random.Random(f"fake-kube:{self.seed}")

    def inject(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def events_about(self, name: str, reason: str | None = None) -> list[Obj]:
        with self.lock:
            return [e for e in self.events if e["involvedObject"].get("name") == name
                    and (reason is None or e["reason"] == reason)]

    # --- used by FakeKube, under the lock -------------------------------------------------

    def uid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def fault(self, verb: str, name: str | None, body: Obj | None) -> None:
        for f in self.faults:
            if f.verb == verb and f.name in (None, name) and f.times > 0 and (
                    f.when is None or f.when(body)):
                f.times -= 1
                f.hits += 1
                raise Unavailable(f"Kubernetes API: {verb} {name or ''}: the API server is "
                                  "unavailable (503, injected); retry later", status=503)
        self.faults = [f for f in self.faults if f.times > 0]

    def bump(self, kind: str, key: Key, obj: Obj, by: str) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.latest[key[:2]] = self.rv
        self.log.append((self.rv, kind, key, obj, by))  # stored objects are never changed
        self.changed.notify_all()
        return copy_json(obj)


def _real_wait(cluster: FakeCluster, ready: Callable[[], bool], seconds: float) -> None:
    with cluster.changed:
        cluster.changed.wait_for(ready, seconds)


class FakeKube(ClientRules):
    """One client (one replica's connection) of a `FakeCluster`; see the module docstring.
    `FakeKube()` makes its own cluster; `FakeKube(cluster)` shares one."""

    conflict_wait = wait_none()

    def __init__(self, cluster: FakeCluster | None = None, *, name: str = "client",
                 timeout: float = 10.0, conflict_retries: int = 8,
                 clock: Callable[[], dt.datetime] = _utcnow,
                 monotonic: Callable[[], float] = time.monotonic,
                 hop: Callable[[str], None] = lambda verb: None,
                 wait_until: Callable[[Callable[[], bool], float], None] | None = None):
        self.cluster = cluster if cluster is not None else FakeCluster()
        self.name, self.timeout, self.conflict_retries = name, timeout, conflict_retries
        self.clock, self.monotonic, self.hop = clock, monotonic, hop
        self.wait_until = wait_until or (lambda ready, s: _real_wait(self.cluster, ready, s))
        self.conflicts = 0
        self.cut = False  # cut off the API server: every request is Unavailable

    def __repr__(self) -> str:
        return f"FakeKube({self.name!r})"

    # --- plumbing ----------------------------------------------------------------------------

    def _request(self, verb: str, what: str, name: str | None = None,
                 body: Obj | None = None) -> None:
        """A request leaves: network time, then refused when cut off or faulted. Called
        without the lock; the caller then takes it to apply the request."""
        self.hop(verb)
        if self.cut:
            raise Unavailable(f"Kubernetes API: {verb} {what}: no answer from the API "
                              f"server ({self.name} is cut off); retry later", status=0)
        with self.cluster.lock:
            self.cluster.fault(verb, name, body)

    def _stored(self, key: Key, verb: str) -> Obj:
        obj = self.cluster.objects.get(key)
        if obj is None:
            group, plural, namespace, name = key
            raise NotFound(f"Kubernetes API: {verb} {_ref(group, plural, namespace, name)}: "
                           f"not found (404): no {plural} named {name!r} in namespace "
                           f"{namespace}", status=404)
        return obj

    @staticmethod
    def _key(group: str, plural: str, namespace: str, body: Obj) -> Key:
        return group, plural, namespace, body["metadata"]["name"]

    def _check_version(self, key: Key, body: Obj, stored: Obj, verb: str) -> None:
        sent = (body.get("metadata") or {}).get("resourceVersion")
        what = _ref(key[0], key[1], key[2], key[3])
        if not sent:
            raise Invalid(f"Kubernetes API: {verb} {what} was rejected as invalid (422): "
                          "metadata.resourceVersion: must be specified for an update",
                          status=422)
        if sent != stored["metadata"]["resourceVersion"]:
            raise Conflict(f"Kubernetes API: {verb} {what}: conflict (409): the object has "
                           "been modified; re-read it and apply the change again",
                           status=409)

    # --- custom objects -------------------------------------------------------------------

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        self._request("get", _ref(group, plural, namespace, name), name)
        with self.cluster.lock:
            return copy_json(self._stored((group, plural, namespace, name), "get"))

    def list(self, group: str, version: str, namespace: str | None, plural: str, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList:
        self._request("list", _ref(group, plural, namespace))
        with self.cluster.lock:
            items = [copy_json(o) for (g, p, ns, _), o in sorted(
                self.cluster.objects.items()) if (g, p) == (group, plural)
                and namespace in (None, ns)]
            return ObjectList(items, str(self.cluster.rv))

    def create(self, group: str, version: str, namespace: str, plural: str,
               body: Obj) -> Obj:
        key = self._key(group, plural, namespace, body)
        self._request("create", _ref(group, plural, namespace, key[3]), key[3], body)
        with self.cluster.lock:
            if key in self.cluster.objects:
                raise AlreadyExists(f"Kubernetes API: create {_ref(*key[:3], key[3])}: "
                                    "already exists (409)", status=409)
            obj = copy_json(body)
            meta = obj.setdefault("metadata", {})
            meta.update(namespace=namespace, uid=self.cluster.uid(),
                        creationTimestamp=_micro(self.clock()))
            if (group, plural) != LEASES:  # custom resources count their generations
                meta["generation"] = 1
            for server_side in ("deletionTimestamp", "resourceVersion"):
                meta.pop(server_side, None)
            if plural in self.cluster.status_subresource:
                obj.pop("status", None)
            return self.cluster.bump("ADDED", key, obj, self.name)

    def replace(self, group: str, version: str, namespace: str, plural: str,
                body: Obj) -> Obj:
        key = self._key(group, plural, namespace, body)
        self._request("replace", _ref(group, plural, namespace, key[3]), key[3], body)
        with self.cluster.lock:
            stored = self._stored(key, "update")
            self._check_version(key, body, stored, "update")
            meta, old = copy_json(body["metadata"]), stored["metadata"]
            if old.get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
                    old.get("finalizers") or []):
                raise Invalid(f"Kubernetes API: update {_ref(*key[:3], key[3])} was "
                              "rejected as invalid (422): metadata.finalizers: Forbidden: no "
                              "new finalizers can be added if the object is being deleted",
                              status=422)
            for server_side in ("uid", "generation", "creationTimestamp",
                                "deletionTimestamp", "namespace", "name"):
                if server_side in old:
                    meta[server_side] = old[server_side]
                else:
                    meta.pop(server_side, None)
            subresource = plural in self.cluster.status_subresource
            obj = {**copy_json({k: v for k, v in body.items() if k != "metadata"
                             and not (subresource and k == "status")}), "metadata": meta}
            if subresource and "status" in stored:
                obj["status"] = copy_json(stored["status"])
            if "generation" in old and _content(obj) != _content(stored):
                meta["generation"] = old["generation"] + 1
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return self.cluster.bump("DELETED", key, obj, self.name)
            return self.cluster.bump("MODIFIED", key, obj, self.name)

    def replace_status(self, group: str, version: str, namespace: str, plural: str,
                       body: Obj) -> Obj:
        key = self._key(group, plural, namespace, body)
        self._request("replace_status", _ref(group, f"{plural}/status", namespace, key[3]),
                      key[3], body)
        with self.cluster.lock:
            stored = self._stored(key, "update")
            self._check_version(key, body, stored, "update")
            obj = copy_json({k: v for k, v in stored.items() if k != "status"})
            obj["status"] = copy_json(body.get("status") or {})
            return self.cluster.bump("MODIFIED", key, obj, self.name)

    def delete(self, group: str, version: str, namespace: str, plural: str,
               name: str) -> Obj:
        key = (group, plural, namespace, name)
        self._request("delete", _ref(group, plural, namespace, name), name)
        with self.cluster.lock:
            obj = copy_json(self._stored(key, "delete"))
            meta = obj["metadata"]
            if not meta.get("finalizers"):
                return self.cluster.bump("DELETED", key, obj, self.name)
            if meta.get("deletionTimestamp"):
                return obj  # already marked: nothing changes
            meta["deletionTimestamp"] = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
            if "generation" in meta:
                meta["generation"] += 1
            return self.cluster.bump("MODIFIED", key, obj, self.name)

    def watch(self, group: str, version: str, namespace: str | None, plural: str, *,
              resource_version: str, timeout_seconds: int = 300,
              label_selector: str | None = None, field_selector: str | None = None,
              bookmarks: bool = True) -> Iterator[WatchEvent]:
        what = _ref(group, plural, namespace)
        self._request("watch", what)
        cluster, seen = self.cluster, int(resource_version or 0)
        deadline = self.monotonic() + timeout_seconds
        while True:
            with cluster.lock:
                news = [(rv, kind, obj) for rv, kind, (g, p, ns, _), obj, _ in cluster.log
                        if rv > seen and (g, p) == (group, plural)
                        and namespace in (None, ns)]
                latest = cluster.latest.get((group, plural), 0)
            for rv, kind, obj in news:
                seen = rv
                yield WatchEvent(kind, copy_json(obj), str(rv))
            if self.cut:
                raise Unavailable(f"Kubernetes API: watch {what} broke off ({self.name} is "
                                  "cut off); watch again from the last resourceVersion",
                                  status=0)
            left = deadline - self.monotonic()
            if left <= 0:
                return
            self.wait_until(partial(self._moved, (group, plural), latest), left)

    def _moved(self, resource: tuple[str, str], since: int) -> bool:
        """An object of `resource` changed after resourceVersion `since`, or we were cut
        off."""
        return self.cluster.latest.get(resource, 0) > since or self.cut

    # --- secrets and events ------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str, key: str) -> bytes:
        self._request("read_secret", _ref("", "secrets", namespace, name), name)
        with self.cluster.lock:
            data = self.cluster.secrets.get((namespace, name))
        if data is None or key not in data:
            raise NotFound(f"Secret {namespace}/{name} has no key {key!r}")
        return data[key]

    def emit_event(self, involved: Obj, *, reason: str, message: str, type: str = "Normal",
                   action: str = "", component: str = "failover-controller",
                   instance: str = "") -> Obj:
        meta = involved.get("metadata") or {}
        self._request("emit_event", _ref("", "events", meta.get("namespace")),
                      meta.get("name"))
        with self.cluster.lock:
            event = {"metadata": {"name": f"{meta.get('name')}.{len(self.cluster.events):x}",
                                  "namespace": meta.get("namespace") or "default"},
                     "involvedObject": {"kind": involved.get("kind"),
                                        "name": meta.get("name"), "uid": meta.get("uid")},
                     "reason": reason, "message": message, "type": type, "count": 1,
                     "source": {"component": component}}
            self.cluster.events.append(event)
            return copy_json(event)

    def count_event(self, event: Obj, count: int) -> Obj:
        name = event["metadata"]["name"]
        self._request("count_event", _ref("", "events", event["metadata"]["namespace"],
                                          name), name)
        with self.cluster.lock:
            for stored in self.cluster.events:
                if stored["metadata"]["name"] == name:
                    stored["count"] = count
                    return copy_json(stored)
        raise NotFound(f"Event {name} not found")

    # --- leases: stored as objects; the rules are ClientRules' ---------------------------

    def get_lease(self, namespace: str, name: str, *,
                  timeout: float | None = None) -> Lease | None:
        self._request("get_lease", _ref(*LEASES, namespace, name), name)
        with self.cluster.lock:
            obj = self.cluster.objects.get((*LEASES, namespace, name))
            return None if obj is None else Lease.from_object(copy_json(obj))

    def create_lease(self, namespace: str, name: str, *, holder: str,
                     duration_seconds: int, now: dt.datetime | None = None) -> Lease:
        body = lease_body(namespace, name, holder, duration_seconds, now or self.clock())
        return Lease.from_object(self.create(LEASES[0], "v1", namespace, LEASES[1], body))

    def _write_lease(self, lease: Lease, spec: dict[str, Any]) -> Lease:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease.name, "namespace": lease.namespace,
                             "resourceVersion": lease.resource_version},
                "spec": spec}
        return Lease.from_object(self.replace(LEASES[0], "v1", lease.namespace, LEASES[1],
                                              body))


def _content(obj: Obj) -> Obj:
    """What the generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}

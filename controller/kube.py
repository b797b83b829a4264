"""Kubernetes API access: the ONLY module that imports the `kubernetes` client.

Owns every conversation with a Kubernetes API server, synchronously, so the rest of the
controller (operator, mesh traffic backends, Secret reader) never handles the client's
models, HTTP errors or connection setup. Why each rule:

- **Optimistic concurrency**: writes carry the `metadata.resourceVersion` that was read;
  the server refuses a stale write with 409 Conflict. `update`/`update_status` re-read
  and re-apply the caller's mutation on conflict, a bounded number of times (tenacity),
  so a concurrent edit is never overwritten and never lost.
- **Fenced writes**: resourceVersion alone does not stop a deposed leader, whose retry
  re-reads and re-applies on top of its successor's work. With `fencing=Fencing(token,
  holder)` each try compares the leader's token (its Lease's `leaseTransitions`) with
  the `status.fencingToken` just read and refuses (`StaleFencingToken`) when the stored
  one is larger; a fenced status write stamps its own token.
- **Watch**: `watch` streams a list's changes from a resourceVersion with bookmarks, and
  raises `Gone` when the server no longer has that version (410): the caller relists.
- **Clear errors** (defined in `kube_errors.py`, re-exported here): an API error becomes
  a named exception (`NotFound`, `Forbidden`,
  `Conflict`, `Gone`, `Invalid`, `Unauthorized`, `Unavailable`) whose message names the
  object (resource, namespace/name) and the fix, e.g. the verb and resource to grant in
  `manifests/deploy/rbac.yaml`. Errors that retrying cannot fix are `PermanentError`s;
  `Unavailable` is a `ConnectionError`, which the executor retries. Tokens never appear
  in messages (messages are built from the API's Status, then passed through `redact`).
- **Leases** (coordination.k8s.io/v1) for leader election: get / create / renew / take
  over after expiry / release, each written with the resourceVersion read, so two
  replicas can never both believe they won. `leaseTransitions` grows on every change of
  holder: it is the leader's fencing token. A renewal writes the holder's configured
  `leaseDurationSeconds` (a changed setting takes effect, a stale 300 s does not stay).
  Whether another holder's Lease has expired is the caller's to judge (`expired`): the
  operator judges it as client-go does, from when it last saw the Lease change on its
  own monotonic clock, so a skewed clock never decides leadership; without a judge it is
  `renewTime + leaseDurationSeconds` against `now` (tests and tools pass `now`).
- **Events**: core/v1 Events about an object, for the operator's record of each step; one
  that repeats is counted on the same Event (`count_event`), not created again.
- **`KubeAPI`**: the part of `Kube` the operator uses, as a Protocol, so the safety
  simulation can run real operators over `controller.testing_kube.FakeKube` (which
  `tests/contract/kube/test_kube_contract.py` holds to this class's behaviour). The
  update and Lease rules above are `ClientRules`, which both inherit: the fake differs
  only in the server it talks to.

Custom objects are addressed as (group, version, namespace, plural, name), like the
client's CustomObjectsApi. `namespace=None` on list/watch means all namespaces.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import pickle
import secrets as _secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

from controller.kube_errors import (  # re-exported: callers name them as kube.X
    AlreadyExists,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    LeaseHeld,
    LeaseLost,
    NotFound,
    StaleFencingToken,
    Unauthorized,
    Unavailable,
    _ref,
    error_from_status,
)
from controller.model import PermanentError
from controller.plan import Duration
from controller.secrets import SecretRef, Secrets, redact

__all__ = [
    "AlreadyExists", "Conflict", "Fencing", "Forbidden", "Gone", "Invalid", "Kube", "KubeAPI",
    "KubeConnection", "KubeError", "Lease", "LeaseHeld", "LeaseLost", "NotFound", "ObjectList",
    "StaleFencingToken", "Unauthorized", "Unavailable", "WatchEvent", "connect",
    "default_namespace", "error_from_status",
]

Obj = dict[str, Any]
Mutation = Callable[[Obj], Obj | None]

# --- connection ----------------------------------------------------------------------------


class KubeConnection(BaseModel):
    """How to reach the API server: a kubeconfig, the in-cluster ServiceAccount, or an
    explicit host + token + CA. With none given: in-cluster when running in a pod
    (KUBERNETES_SERVICE_HOST is set), else the default kubeconfig ($KUBECONFIG or
    ~/.kube/config)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kubeconfig: str | None = Field(None, description="path of a kubeconfig file")
    context: str | None = Field(None, description="kubeconfig context (default: current)")
    in_cluster: bool = Field(False, alias="inCluster",
                             description="use the pod's ServiceAccount token and CA")
    host: str | None = Field(None, description="API server URL, e.g. https://10.0.0.1:6443")
    token: SecretRef | None = Field(None, description="bearer token (with host)")
    ca_file: str | None = Field(None, alias="caFile", description="CA bundle (with host)")
    timeout: Duration = Field(10.0, gt=0, description="per API request")

    @model_validator(mode="after")
    def _one_source(self) -> KubeConnection:
        sources = [n for n, on in (("kubeconfig", self.kubeconfig is not None),
                                   ("inCluster", self.in_cluster),
                                   ("host", self.host is not None)) if on]
        if len(sources) > 1:
            raise ValueError(f"give one way to reach the API server, not {' and '.join(sources)}"
                             ": kubeconfig (+context), inCluster: true, or host + token + caFile")
        if (self.token is not None or self.ca_file is not None) and self.host is None:
            raise ValueError("token and caFile go with host: add host (the API server URL)")
        if self.context is not None and self.host is not None:
            raise ValueError("context selects a kubeconfig context; it does not apply to host")
        return self


def _bearer(cfg: Any, token: str) -> None:
    # the full header value under the legacy key: client 36 reads it as BearerToken's
    # alias, earlier clients under its own name; either way no prefix lookup is involved
    cfg.api_key = {"authorization": f"Bearer {token}"}
    cfg.api_key_prefix = {}


def _configuration(conn: KubeConnection, secrets: Secrets | None) -> Any:
    cfg = k8s.Configuration()
    try:
        if conn.host is not None:
            cfg.host = conn.host.rstrip("/")
            if conn.token is not None:
                token = (secrets or Secrets()).reveal(conn.token).strip()
                _bearer(cfg, token)
            if conn.ca_file is not None:
                if not Path(conn.ca_file).is_file():
                    raise PermanentError(f"caFile {conn.ca_file} does not exist")
                cfg.ssl_ca_cert = conn.ca_file
        elif conn.in_cluster or (conn.kubeconfig is None and os.environ.get(
                "KUBERNETES_SERVICE_HOST")):
            k8s_config.load_incluster_config(client_configuration=cfg)
        else:
            k8s_config.load_kube_config(config_file=conn.kubeconfig, context=conn.context,
                                        client_configuration=cfg, persist_config=False)
    except ConfigException as exc:
        where = ("the in-cluster ServiceAccount" if conn.in_cluster else
                 f"kubeconfig {conn.kubeconfig or '(default)'}")
        raise PermanentError(f"cannot configure the Kubernetes client from {where}: "
                             f"{redact(str(exc))}") from None
    return cfg


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


# --- the client ------------------------------------------------------------------------------


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


class Kube(ClientRules):
    """A synchronous Kubernetes API client for the controller's few resource kinds.

    Build it with `Kube.connect(...)` or `Kube(api_client)`. `conflict_retries` bounds the
    re-read + re-apply cycles of `update`/`update_status` on 409 Conflict.
    """

    def __init__(self, api_client: Any, *, timeout: float = 10.0, conflict_retries: int = 8,
                 clock: Callable[[], dt.datetime] = _utcnow):
        self.api_client = api_client
        self.timeout = timeout
        self.conflict_retries = conflict_retries
        self.clock = clock
        self.conflicts = 0  # 409s met (and retried) by update/update_status: for metrics
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)

    @classmethod
    def connect(cls, conn: KubeConnection | None = None, *, secrets: Secrets | None = None,
                **kwargs: Any) -> Kube:
        """From a `KubeConnection` (kubeconfig / in-cluster / host + token + CA)."""
        conn = conn or KubeConnection()
        cfg = _configuration(conn, secrets)
        return cls(k8s.ApiClient(cfg), timeout=conn.timeout, **kwargs)

    @classmethod
    def from_token(cls, host: str, token: str, *, ca_file: str | None = None,
                   **kwargs: Any) -> Kube:
        """Explicit host + bearer token (+ CA bundle); the token stays in the client."""
        cfg = k8s.Configuration()
        cfg.host = host.rstrip("/")
        _bearer(cfg, token)
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        return cls(k8s.ApiClient(cfg), **kwargs)

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def __repr__(self) -> str:  # never the token
        return f"Kube(host={self.host!r})"

    def close(self) -> None:
        self.api_client.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, verb: str, group: str, plural: str, namespace: str | None,
              name: str | None, fn: Callable[..., Any], *args: Any,
              stream: bool = False, timeout: Any = None, **kwargs: Any) -> Any:
        """Call one client method, raw (no model decoding); errors become KubeErrors."""
        try:
            resp = fn(*args, _preload_content=False,
                      _request_timeout=timeout if timeout is not None else self.timeout,
                      **kwargs)
        except ApiException as exc:
            raise error_from_status(exc.status or 0, exc.body, verb=verb, group=group,
                                    plural=plural, namespace=namespace, name=name,
                                    host=self.host) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"Kubernetes API: {verb} {_ref(group, plural, namespace, name)}"
                              f": no answer from {self.host} ({type(exc).__name__}: {exc}); "
                              "retry later", status=0) from None
        if stream:
            return resp
        data = resp.data
        return json.loads(data) if data else {}

    # --- custom objects ---------------------------------------------------------------------

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        obj: Obj = self._call("get", group, plural, namespace, name,
                              self._custom.get_namespaced_custom_object,
                              group, version, namespace, plural, name)
        return obj

    def list(self, group: str, version: str, namespace: str | None, plural: str, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList:
        """Every object (all pages), with the list's resourceVersion to watch from."""
        items: list[Obj] = []
        kwargs: dict[str, Any] = {"limit": 500}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        while True:
            if namespace is None:
                page = self._call("list", group, plural, None, None,
                                  self._custom.list_cluster_custom_object,
                                  group, version, plural, **kwargs)
            else:
                page = self._call("list", group, plural, namespace, None,
                                  self._custom.list_namespaced_custom_object,
                                  group, version, namespace, plural, **kwargs)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return ObjectList(items, str(meta.get("resourceVersion", "")))
            kwargs["_continue"] = meta["continue"]

    def create(self, group: str, version: str, namespace: str, plural: str,
               body: Obj) -> Obj:
        name = (body.get("metadata") or {}).get("name")
        obj: Obj = self._call("create", group, plural, namespace, name,
                              self._custom.create_namespaced_custom_object,
                              group, version, namespace, plural, body)
        return obj

    def replace(self, group: str, version: str, namespace: str, plural: str,
                body: Obj) -> Obj:
        """PUT the whole object; its metadata.resourceVersion makes it a compare-and-swap."""
        name = body["metadata"]["name"]
        obj: Obj = self._call("update", group, plural, namespace, name,
                              self._custom.replace_namespaced_custom_object,
                              group, version, namespace, plural, name, body)
        return obj

    def replace_status(self, group: str, version: str, namespace: str, plural: str,
                       body: Obj) -> Obj:
        name = body["metadata"]["name"]
        obj: Obj = self._call("update", group, f"{plural}/status", namespace, name,
                              self._custom.replace_namespaced_custom_object_status,
                              group, version, namespace, plural, name, body)
        return obj

    def delete(self, group: str, version: str, namespace: str, plural: str,
               name: str) -> Obj:
        """Delete the object: gone at once without finalizers; with finalizers it stays,
        marked with `metadata.deletionTimestamp`, until the last finalizer is removed."""
        obj: Obj = self._call("delete", group, plural, namespace, name,
                              self._custom.delete_namespaced_custom_object,
                              group, version, namespace, plural, name)
        return obj

    def patch(self, group: str, version: str, namespace: str, plural: str, name: str,
              patch: Obj, *, resource_version: str | None = None,
              status: bool = False) -> Obj:
        """JSON merge patch; with `resource_version`, refused (Conflict) if it changed."""
        body = copy.deepcopy(patch)
        if resource_version is not None:
            body.setdefault("metadata", {})["resourceVersion"] = resource_version
        fn = (self._custom.patch_namespaced_custom_object_status if status
              else self._custom.patch_namespaced_custom_object)
        # the client sends a dict body as a JSON merge patch only when told so
        obj: Obj = self._call("patch", group, f"{plural}/status" if status else plural,
                              namespace, name, fn, group, version, namespace, plural, name,
                              body, _content_type="application/merge-patch+json")
        return obj


    def watch(self, group: str, version: str, namespace: str | None, plural: str, *,
              resource_version: str, timeout_seconds: int = 300,
              label_selector: str | None = None, field_selector: str | None = None,
              bookmarks: bool = True) -> Iterator[WatchEvent]:
        """Changes after `resource_version` (from `list`), until the server ends the watch
        (after `timeout_seconds`); then watch again from the last event's resourceVersion.

        BOOKMARK events carry only a newer resourceVersion. Raises `Gone` when that
        version is no longer available (410): list again and watch from the new list.
        """
        kwargs: dict[str, Any] = {"watch": True, "resource_version": resource_version,
                                  "allow_watch_bookmarks": bookmarks,
                                  "timeout_seconds": timeout_seconds}
        if label_selector:
            kwargs["label_selector"] = label_selector
        if field_selector:
            kwargs["field_selector"] = field_selector
        timeout = (self.timeout, timeout_seconds + self.timeout)
        if namespace is None:
            resp = self._call("watch", group, plural, None, None,
                              self._custom.list_cluster_custom_object, group, version,
                              plural, stream=True, timeout=timeout, **kwargs)
        else:
            resp = self._call("watch", group, plural, namespace, None,
                              self._custom.list_namespaced_custom_object, group, version,
                              namespace, plural, stream=True, timeout=timeout, **kwargs)
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = str(event.get("type", "")), event.get("object") or {}
                if kind == "ERROR":
                    raise error_from_status(int(obj.get("code") or 0), obj, verb="watch",
                                            group=group, plural=plural, namespace=namespace,
                                            host=self.host)
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                yield WatchEvent(kind, obj, rv)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"Kubernetes API: watch {_ref(group, plural, namespace)} broke "
                              f"off ({type(exc).__name__}); watch again from the last "
                              "resourceVersion", status=0) from None
        finally:  # close first: a half-read stream must never go back to the pool
            resp.close()
            resp.release_conn()

    # --- secrets -------------------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str, key: str) -> bytes:
        """One key of a Secret, decoded; pluggable into `Secrets(kube_reader=...)`."""
        import base64

        obj = self._call("get", "", "secrets", namespace, name,
                         self._core.read_namespaced_secret, name, namespace)
        data = obj.get("data") or {}
        if key not in data:
            raise NotFound(f"Secret {namespace}/{name} has no key {key!r}; it has: "
                           f"{', '.join(sorted(data)) or 'no keys'}")
        return base64.b64decode(data[key])

    # --- events ----------------------------------------------------------------------------------

    def emit_event(self, involved: Obj, *, reason: str, message: str, type: str = "Normal",
                   action: str = "", component: str = "failover-controller",
                   instance: str = "") -> Obj:
        """Create a core/v1 Event about `involved` (an object as read) in its namespace."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = self.clock()
        ref = {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
               "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid"),
               "resourceVersion": meta.get("resourceVersion")}
        stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event_name = f"{meta.get('name')}.{_secrets.token_hex(8)}"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": namespace},
            "involvedObject": {k: v for k, v in ref.items() if v},
            "reason": reason[:128], "message": redact(message)[:1024], "type": type,
            "action": action or reason, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": _micro(now),
            "source": {"component": component},
            "reportingComponent": component, "reportingInstance": instance or component,
        }
        obj: Obj = self._call("create", "", "events", namespace, event_name,
                              self._core.create_namespaced_event, namespace, body)
        return obj

    def count_event(self, event: Obj, count: int) -> Obj:
        """The Event `event` (as created) happened `count` times: its count and
        lastTimestamp brought up to date (a merge patch), as `kubectl describe` shows
        "(x12 over 3m)", instead of a new Event each time."""
        meta = event.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        stamp = self.clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj: Obj = self._call("patch", "", "events", namespace, name,
                              self._core.patch_namespaced_event, name, namespace,
                              {"count": count, "lastTimestamp": stamp},
                              _content_type="application/merge-patch+json")
        return obj

    # --- leases ----------------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str, *,
                  timeout: float | None = None) -> Lease | None:
        """The Lease, or None when there is none; `timeout` bounds this one request (a
        leader checking its Lease must not wait longer than its renew deadline allows)."""
        try:
            obj = self._call("get", "coordination.k8s.io", "leases", namespace, name,
                             self._coordination.read_namespaced_lease, name, namespace,
                             timeout=timeout)
        except NotFound:
            return None
        return Lease.from_object(obj)

    def create_lease(self, namespace: str, name: str, *, holder: str,
                     duration_seconds: int, now: dt.datetime | None = None) -> Lease:
        """Create the lease held by `holder`; AlreadyExists when it exists."""
        body = lease_body(namespace, name, holder, duration_seconds, now or self.clock())
        obj = self._call("create", "coordination.k8s.io", "leases", namespace, name,
                         self._coordination.create_namespaced_lease, namespace, body)
        return Lease.from_object(obj)

    def _write_lease(self, lease: Lease, spec: dict[str, Any]) -> Lease:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease.name, "namespace": lease.namespace,
                             "resourceVersion": lease.resource_version},
                "spec": spec}
        obj = self._call("update", "coordination.k8s.io", "leases", lease.namespace,
                         lease.name, self._coordination.replace_namespaced_lease,
                         lease.name, lease.namespace, body)
        return Lease.from_object(obj)



SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(conn: KubeConnection) -> str:
    """The namespace kubectl would use: the pod's own in-cluster, else the kubeconfig
    context's, else `default`."""
    if conn.in_cluster or (conn.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST")
                           and SA_NAMESPACE.is_file()):
        return SA_NAMESPACE.read_text().strip() or "default"
    if conn.host is not None:
        return "default"
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=conn.kubeconfig)
    except (ConfigException, OSError):
        return "default"
    chosen = next((c for c in contexts if c.get("name") == conn.context), active) \
        if conn.context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def connect(conn: KubeConnection | None = None, *, secrets: Secrets | None = None) -> Kube:
    """`Kube.connect`: a client from a kubeconfig, the in-cluster config or host + token."""
    return Kube.connect(conn, secrets=secrets)

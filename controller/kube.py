"""Kubernetes API access: the verbs the controller uses, spoken as API paths and JSON.

Owns every conversation with a Kubernetes API server, synchronously, so the rest of the
controller (operator, mesh traffic backends, Secret reader) never handles HTTP, errors or
connection setup. Built on `controller.kube_config` (kubeconfig, in-cluster, host + token)
and `controller.kube_http` (pooled urllib3, named errors, watch lines) rather than the
`kubernetes` client, whose import alone held ~38 MiB of every replica (issue 20) for
models the controller never used (it reads and writes plain JSON). Why each rule:

- **Optimistic concurrency**: writes carry the `metadata.resourceVersion` that was read;
  the server refuses a stale write with 409 Conflict. `update`/`update_status` re-read
  and re-apply the caller's mutation on conflict, a bounded number of times (tenacity),
  so a concurrent edit is never overwritten and never lost.
- **Fenced writes**: resourceVersion alone does not stop a deposed leader, whose retry
  re-reads and re-applies on top of its successor's work. With `fencing=Fencing(token,
  holder)` each try compares the leader's token (its Lease's `leaseTransitions`) with
  the `status.fencingToken` just read and refuses (`StaleFencingToken`) when the stored
  one is larger; a fenced status write stamps its own token.
- **Lean objects**: every object returned comes without `metadata.managedFields`, as
  the fake's do; a write that leaves it out leaves the server's as it is (only a write
  that sets it replaces it), so nothing is lost, and an operator holding the last copy
  of each of 1,000 plans holds a third less.
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
  only in the server it talks to. These, and the records (`Lease`, `Fencing`,
  `ObjectList`, `WatchEvent`), live in `controller.kube_api`, free of any HTTP, and are
  re-exported here; this module keeps the connection and the verbs.

Custom objects are addressed as (group, version, namespace, plural, name), as in the
API's paths. `namespace=None` on list/watch means all namespaces.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import secrets as _secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller import kube_config
from controller.kube_api import (  # re-exported: callers name them as kube.X
    ClientRules,
    Fencing,
    KubeAPI,
    Lease,
    Obj,
    ObjectList,
    WatchEvent,
    _micro,
    _utcnow,
    copy_json,
    lease_body,
)
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
    error_from_status,
)
from controller.kube_http import JSON, MERGE_PATCH, Call, Timeout, Transport, decode, path
from controller.model import PermanentError
from controller.schema import Duration
from controller.secrets import SecretRef, Secrets, redact

__all__ = [
    "AlreadyExists", "ClientRules", "Conflict", "Fencing", "Forbidden", "Gone", "Invalid",
    "Kube", "KubeAPI", "KubeConnection", "KubeError", "Lease", "LeaseHeld", "LeaseLost",
    "NotFound", "ObjectList", "StaleFencingToken", "Unauthorized", "Unavailable", "WatchEvent",
    "connect", "copy_json", "default_namespace", "error_from_status", "lease_body",
]

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


def _configuration(conn: KubeConnection,
                   secrets: Secrets | None) -> kube_config.ClientConfig:
    try:
        if conn.host is not None:
            if conn.ca_file is not None and not Path(conn.ca_file).is_file():
                raise PermanentError(f"caFile {conn.ca_file} does not exist")
            credentials = kube_config.Credentials()
            if conn.token is not None:
                credentials = kube_config.bearer((secrets or Secrets()).reveal(conn.token))
            return kube_config.from_host(conn.host, credentials, ca_file=conn.ca_file)
        if conn.in_cluster or (conn.kubeconfig is None and os.environ.get(
                "KUBERNETES_SERVICE_HOST")):
            return kube_config.in_cluster()
        return kube_config.KubeConfigFile.load(conn.kubeconfig).client(conn.context)
    except kube_config.KubeConfigError as exc:
        where = (f"host {conn.host}" if conn.host is not None else
                 "the in-cluster ServiceAccount" if conn.in_cluster else
                 f"kubeconfig {conn.kubeconfig or '(default)'}")
        raise PermanentError(f"cannot configure the Kubernetes client from {where}: "
                             f"{redact(str(exc))}") from None


# --- the client ------------------------------------------------------------------------------


def _lean(obj: Obj) -> Obj:
    """`obj` without `metadata.managedFields` (server-side apply's record of who set which
    field: a third of a plan's size in memory, and read by nothing here)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj



class Kube(ClientRules):
    """A synchronous Kubernetes API client for the controller's few resource kinds.

    Build it with `Kube.connect(...)`, `Kube.from_token(...)` or `Kube(transport)`.
    `conflict_retries` bounds the re-read + re-apply cycles of `update`/`update_status`
    on 409 Conflict.
    """

    def __init__(self, transport: Transport, *, timeout: float = 10.0,
                 conflict_retries: int = 8, clock: Callable[[], dt.datetime] = _utcnow):
        self.transport = transport
        self.timeout = timeout
        self.conflict_retries = conflict_retries
        self.clock = clock
        self.conflicts = 0  # 409s met (and retried) by update/update_status: for metrics

    @classmethod
    def connect(cls, conn: KubeConnection | None = None, *, secrets: Secrets | None = None,
                **kwargs: Any) -> Kube:
        """From a `KubeConnection` (kubeconfig / in-cluster / host + token + CA)."""
        conn = conn or KubeConnection()
        return cls(Transport(_configuration(conn, secrets)), timeout=conn.timeout, **kwargs)

    @classmethod
    def from_token(cls, host: str, token: str, *, ca_file: str | None = None,
                   **kwargs: Any) -> Kube:
        """Explicit host + bearer token (+ CA bundle); the token stays in the client."""
        config = kube_config.from_host(host, kube_config.bearer(token), ca_file=ca_file)
        return cls(Transport(config), **kwargs)

    @property
    def host(self) -> str:
        return self.transport.host

    def __repr__(self) -> str:  # never the token
        return f"Kube(host={self.host!r})"

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, url: str, call: Call, *, query: dict[str, Any] | None = None,
              body: Any = None, content_type: str = JSON,
              timeout: Timeout | None = None) -> Any:
        """One request: the answer's JSON (lean), or a KubeError naming `call`'s object."""
        answer = self.transport.request(method, url, call, query=query, body=body,
                                        content_type=content_type,
                                        timeout=self.timeout if timeout is None else timeout)
        for obj in answer.get("items") or [answer]:
            _lean(obj)
        return answer

    @staticmethod
    def _custom(group: str, version: str, namespace: str | None, plural: str,
                *rest: str) -> str:
        where = ("namespaces", namespace) if namespace else ()
        return path("apis", group, version, *where, plural, *rest)

    def whoami(self) -> str | None:
        """The user name the API server authenticated these credentials as (a
        SelfSubjectReview, Kubernetes 1.28+); None when it does not say (404, or 403 for a
        user the RBAC does not let ask)."""
        group = "authentication.k8s.io"
        review = {"apiVersion": f"{group}/v1", "kind": "SelfSubjectReview"}
        try:
            got = self._call("POST", self._custom(group, "v1", None, "selfsubjectreviews"),
                             Call("create", group, "selfsubjectreviews", None), body=review)
        except (NotFound, Forbidden):
            return None
        return str(got["status"]["userInfo"]["username"])

    # --- custom objects ---------------------------------------------------------------------

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj:
        obj: Obj = self._call("GET", self._custom(group, version, namespace, plural, name),
                              Call("get", group, plural, namespace, name))
        return obj

    def list(self, group: str, version: str, namespace: str | None, plural: str, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList:
        """Every object (all pages), with the list's resourceVersion to watch from."""
        items: list[Obj] = []
        query: dict[str, Any] = {"labelSelector": label_selector or None,
                                 "fieldSelector": field_selector or None, "limit": 500}
        url = self._custom(group, version, namespace, plural)
        while True:
            page = self._call("GET", url, Call("list", group, plural, namespace),
                              query=query)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return ObjectList(items, str(meta.get("resourceVersion", "")))
            query["continue"] = meta["continue"]

    def create(self, group: str, version: str, namespace: str, plural: str,
               body: Obj) -> Obj:
        name = (body.get("metadata") or {}).get("name")
        obj: Obj = self._call("POST", self._custom(group, version, namespace, plural),
                              Call("create", group, plural, namespace, name), body=body)
        return obj

    def replace(self, group: str, version: str, namespace: str, plural: str,
                body: Obj) -> Obj:
        """PUT the whole object; its metadata.resourceVersion makes it a compare-and-swap."""
        name = body["metadata"]["name"]
        obj: Obj = self._call("PUT", self._custom(group, version, namespace, plural, name),
                              Call("update", group, plural, namespace, name), body=body)
        return obj

    def replace_status(self, group: str, version: str, namespace: str, plural: str,
                       body: Obj) -> Obj:
        name = body["metadata"]["name"]
        obj: Obj = self._call(
            "PUT", self._custom(group, version, namespace, plural, name, "status"),
            Call("update", group, f"{plural}/status", namespace, name), body=body)
        return obj

    def delete(self, group: str, version: str, namespace: str, plural: str,
               name: str) -> Obj:
        """Delete the object: gone at once without finalizers; with finalizers it stays,
        marked with `metadata.deletionTimestamp`, until the last finalizer is removed."""
        obj: Obj = self._call("DELETE", self._custom(group, version, namespace, plural, name),
                              Call("delete", group, plural, namespace, name))
        return obj

    def patch(self, group: str, version: str, namespace: str, plural: str, name: str,
              patch: Obj, *, resource_version: str | None = None,
              status: bool = False) -> Obj:
        """JSON merge patch; with `resource_version`, refused (Conflict) if it changed."""
        body = copy.deepcopy(patch)
        if resource_version is not None:
            body.setdefault("metadata", {})["resourceVersion"] = resource_version
        sub = ("status",) if status else ()
        obj: Obj = self._call(
            "PATCH", self._custom(group, version, namespace, plural, name, *sub),
            Call("patch", group, f"{plural}/status" if status else plural, namespace, name),
            body=body, content_type=MERGE_PATCH)
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
        query: dict[str, Any] = {"watch": True, "resourceVersion": resource_version,
                                 "allowWatchBookmarks": bookmarks,
                                 "timeoutSeconds": timeout_seconds,
                                 "labelSelector": label_selector or None,
                                 "fieldSelector": field_selector or None}
        stream = self.transport.stream(
            self._custom(group, version, namespace, plural),
            Call("watch", group, plural, namespace), query=query,
            timeout=(self.timeout, timeout_seconds + self.timeout))
        with closing(stream):  # however the caller stops, the stream is closed now
            for line in stream:
                event = decode(line.decode())
                kind, obj = str(event.get("type", "")), event.get("object") or {}
                if kind == "ERROR":
                    raise error_from_status(int(obj.get("code") or 0), obj, verb="watch",
                                            group=group, plural=plural, namespace=namespace,
                                            host=self.host)
                rv = str((_lean(obj).get("metadata") or {}).get("resourceVersion", ""))
                yield WatchEvent(kind, obj, rv)

    # --- secrets -------------------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str, key: str) -> bytes:
        """One key of a Secret, decoded; pluggable into `Secrets(kube_reader=...)`."""
        import base64

        obj = self._call("GET", path("api", "v1", "namespaces", namespace, "secrets", name),
                         Call("get", "", "secrets", namespace, name))
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
        obj: Obj = self._call("POST", path("api", "v1", "namespaces", namespace, "events"),
                              Call("create", "", "events", namespace, event_name), body=body)
        return obj

    def count_event(self, event: Obj, count: int) -> Obj:
        """The Event `event` (as created) happened `count` times: its count and
        lastTimestamp brought up to date (a merge patch), as `kubectl describe` shows
        "(x12 over 3m)", instead of a new Event each time."""
        meta = event.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        stamp = self.clock().astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        obj: Obj = self._call(
            "PATCH", path("api", "v1", "namespaces", namespace, "events", str(name)),
            Call("patch", "", "events", namespace, name),
            body={"count": count, "lastTimestamp": stamp}, content_type=MERGE_PATCH)
        return obj

    # --- leases ----------------------------------------------------------------------------------

    @staticmethod
    def _lease(namespace: str, *name: str) -> str:
        return path("apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases",
                    *name)

    def get_lease(self, namespace: str, name: str, *,
                  timeout: float | None = None) -> Lease | None:
        """The Lease, or None when there is none; `timeout` bounds this one request (a
        leader checking its Lease must not wait longer than its renew deadline allows)."""
        try:
            obj = self._call("GET", self._lease(namespace, name),
                             Call("get", "coordination.k8s.io", "leases", namespace, name),
                             timeout=timeout)
        except NotFound:
            return None
        return Lease.from_object(obj)

    def create_lease(self, namespace: str, name: str, *, holder: str,
                     duration_seconds: int, now: dt.datetime | None = None) -> Lease:
        """Create the lease held by `holder`; AlreadyExists when it exists."""
        body = lease_body(namespace, name, holder, duration_seconds, now or self.clock())
        obj = self._call("POST", self._lease(namespace),
                         Call("create", "coordination.k8s.io", "leases", namespace, name),
                         body=body)
        return Lease.from_object(obj)

    def _write_lease(self, lease: Lease, spec: dict[str, Any]) -> Lease:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease.name, "namespace": lease.namespace,
                             "resourceVersion": lease.resource_version},
                "spec": spec}
        obj = self._call("PUT", self._lease(lease.namespace, lease.name),
                         Call("update", "coordination.k8s.io", "leases", lease.namespace,
                              lease.name), body=body)
        return Lease.from_object(obj)


def default_namespace(conn: KubeConnection) -> str:
    """The namespace kubectl would use: the pod's own in-cluster, else the kubeconfig
    context's, else `default`."""
    own = kube_config.SERVICE_ACCOUNT / "namespace"
    if conn.in_cluster or (conn.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST")
                           and own.is_file()):
        return own.read_text().strip() or "default"
    if conn.host is not None:
        return "default"
    return kube_config.kubeconfig_namespace(conn.kubeconfig, conn.context) or "default"


def connect(conn: KubeConnection | None = None, *, secrets: Secrets | None = None) -> Kube:
    """`Kube.connect`: a client from a kubeconfig, the in-cluster config or host + token."""
    return Kube.connect(conn, secrets=secrets)

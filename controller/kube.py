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
  only in the server it talks to. These, and the records (`Lease`, `Fencing`,
  `ObjectList`, `WatchEvent`), live in `controller.kube_api`, free of the client, and are
  re-exported here; this module keeps the connection and the client's verbs.

Custom objects are addressed as (group, version, namespace, plural, name), like the
client's CustomObjectsApi. `namespace=None` on list/watch means all namespaces.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import secrets as _secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    _ref,
    error_from_status,
)
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


def _bearer(cfg: Any, token: str) -> None:
    # the full header value under the legacy key: client 36 reads it as BearerToken's
    # alias, earlier clients under its own name; either way no prefix lookup is involved
    cfg.api_key = {"authorization": f"Bearer {token}"}
    cfg.api_key_prefix = {}


CONNECTIONS = 72  # kept open for reuse: the operator's workers and extras, its watch


def _pooled(cfg: Any) -> Any:
    """Keep up to `CONNECTIONS` connections open. The client's default (5 per CPU) is
    fewer than the operator's workers under load, and urllib3 then closes every
    connection beyond it after its request: a new TCP + TLS handshake per request
    (seen with 10,000 plans: "Connection pool is full, discarding connection")."""
    cfg.connection_pool_maxsize = CONNECTIONS
    return cfg


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


# --- the client ------------------------------------------------------------------------------


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
        return cls(k8s.ApiClient(_pooled(cfg)), timeout=conn.timeout, **kwargs)

    @classmethod
    def from_token(cls, host: str, token: str, *, ca_file: str | None = None,
                   **kwargs: Any) -> Kube:
        """Explicit host + bearer token (+ CA bundle); the token stays in the client."""
        cfg = k8s.Configuration()
        cfg.host = host.rstrip("/")
        _bearer(cfg, token)
        if ca_file:
            cfg.ssl_ca_cert = ca_file
        return cls(k8s.ApiClient(_pooled(cfg)), **kwargs)

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

    def whoami(self) -> str | None:
        """The user name the API server authenticated these credentials as (a
        SelfSubjectReview, Kubernetes 1.28+); None when it does not say (404, or 403 for a
        user the RBAC does not let ask)."""
        group = "authentication.k8s.io"
        review = {"apiVersion": f"{group}/v1", "kind": "SelfSubjectReview"}
        try:
            got = self._call("create", group, "selfsubjectreviews", None, None,
                             self._custom.create_cluster_custom_object, group, "v1",
                             "selfsubjectreviews", review)
        except (NotFound, Forbidden):
            return None
        return str(got["status"]["userInfo"]["username"])

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

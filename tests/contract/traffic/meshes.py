"""The mesh objects the traffic tests drive on a real kube-apiserver: one `Kind` per mesh
traffic backend (Istio VirtualService, Gateway API HTTPRoute, SMI TrafficSplit), each an
object at {dc-a: 100, dc-b: 0} with parts the backend does not manage, and `Mesh`: one
such object, created by `admin` in the controller's namespace, with the backend's options.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller import registry
from controller.drill.servers.kube import KubeServers
from controller.kube import Kube
from controller.secrets import Secrets

_N = itertools.count()


@dataclass(frozen=True)
class Kind:
    name: str  # the registry's traffic kind
    group: str
    version: str
    plural: str
    kind: str
    spec: dict[str, Any]  # the object as created (dc-a 100, dc-b 0, plus unmanaged parts)
    options: dict[str, Any]  # the backend's own options (destinations, routes)
    weights: Callable[[dict[str, Any]], list[int]]  # every weight in the spec, in order
    foreign_edit: Callable[[dict[str, Any]], None]  # someone else's edit of the spec
    missing: dict[str, Any]  # options naming a route/destination the object lacks
    missing_error: str  # what the error says exists


HOST = "reviews.prod.svc.cluster.local"
ISTIO = Kind(
    "istio", "networking.istio.io", "v1", "virtualservices", "VirtualService",
    spec={"hosts": ["reviews"], "http": [
        {"name": "main", "match": [{"uri": {"prefix": "/"}}], "retries": {"attempts": 3},
         "route": [{"destination": {"host": HOST, "subset": "dc-a"}, "weight": 100},
                   {"destination": {"host": HOST, "subset": "dc-b"}, "weight": 0}]},
        {"name": "static", "route": [{"destination": {"host": "static"}}]}]},
    options={"routes": ["main"], "destinations": {
        "dc-a": {"host": HOST, "subset": "dc-a"}, "dc-b": {"host": HOST, "subset": "dc-b"}}},
    weights=lambda spec: [d.get("weight") for r in spec["http"] for d in r["route"]],
    foreign_edit=lambda spec: spec["http"][1].update(timeout="5s"),
    missing={"routes": ["checkout"]},
    missing_error='no http route named checkout; it has http route "main", '
                  'http route "static"',
)
GATEWAY = Kind(
    "gateway", "gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute",
    spec={"parentRefs": [{"name": "edge"}], "hostnames": ["shop.example.test"], "rules": [
        {"name": "shop", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
         "backendRefs": [{"name": "shop-dc-a", "port": 8080, "weight": 100},
                         {"name": "shop-dc-b", "port": 8080, "weight": 0}]},
        {"name": "static", "backendRefs": [{"name": "static", "port": 80}]}]},
    options={"rules": ["shop"], "destinations": {
        "dc-a": {"name": "shop-dc-a", "port": 8080}, "dc-b": {"name": "shop-dc-b"}}},
    weights=lambda spec: [b.get("weight") for r in spec["rules"] for b in r["backendRefs"]],
    foreign_edit=lambda spec: spec["rules"][1].update(timeouts={"request": "5s"}),
    missing={"destinations": {"dc-a": {"name": "shop-dc-a"}, "dc-b": {"name": "shop-dc-c"}}},
    missing_error='rule "shop" has no backendRef Service shop-dc-c for site dc-b; it '
                  "references: Service shop-dc-a port 8080; Service shop-dc-b port 8080",
)
SMI = Kind(
    "smi", "split.smi-spec.io", "v1alpha2", "trafficsplits", "TrafficSplit",
    spec={"service": "shop", "backends": [{"service": "shop-dc-a", "weight": 100},
                                          {"service": "shop-dc-b", "weight": 0},
                                          {"service": "shop-canary", "weight": 0}]},
    options={"destinations": {"dc-a": "shop-dc-a", "dc-b": "shop-dc-b"}},
    weights=lambda spec: [b["weight"] for b in spec["backends"]],
    foreign_edit=lambda spec: spec["backends"][2].update(weight=5),
    missing={"destinations": {"dc-a": "shop-dc-a", "dc-b": "shop-dc-x"}},
    missing_error="split of service shop has no backend shop-dc-x for site dc-b; its "
                  "backends are: shop-dc-a, shop-dc-b, shop-canary",
)
KINDS = {k.name: k for k in (ISTIO, GATEWAY, SMI)}


@dataclass
class Mesh:
    kind: Kind
    kube: KubeServers
    name: str
    admin: Kube

    @property
    def ns(self) -> str:
        return self.kube.namespace

    def get(self) -> dict[str, Any]:
        return self.admin.get(self.kind.group, self.kind.version, self.ns, self.kind.plural,
                              self.name)

    def spec_json(self) -> str:
        return json.dumps(self.get()["spec"])

    def options(self, **extra: Any) -> dict[str, Any]:
        return {**self.kube.connection("controller"), "namespace": self.ns,
                "name": self.name, **copy.deepcopy(self.kind.options), **extra}

    def backend(self, **extra: Any) -> Any:
        return registry.build("traffic", self.kind.name, self.options(**extra),
                              secrets=Secrets())

    def resource_version(self) -> str:
        return str(self.get()["metadata"]["resourceVersion"])

    def history(self, since: str) -> list[list[int]]:
        """Every weight in the spec after each change since resourceVersion `since`, in
        order, as a watch saw them (empty when nothing changed)."""
        now = self.resource_version()
        seen: list[list[int]] = []
        if now == since:
            return seen
        for event in self.admin.watch(self.kind.group, self.kind.version, self.ns,
                                      self.kind.plural, resource_version=since,
                                      timeout_seconds=30,
                                      field_selector=f"metadata.name={self.name}"):
            if event.type == "MODIFIED":
                seen.append(self.kind.weights(event.object["spec"]))
                if event.object["metadata"]["resourceVersion"] == now:
                    break
        return seen

    def foreign_edit(self) -> None:
        """Someone else (admin) edits an unmanaged part of the spec."""
        def edit(obj: dict[str, Any]) -> None:
            self.kind.foreign_edit(obj["spec"])
        self.admin.update(self.kind.group, self.kind.version, self.ns, self.kind.plural,
                          self.name, edit)


def make_mesh(kind: Kind, kube: KubeServers) -> Mesh:
    """A fresh object of `kind` (its own name) as `admin` creates it."""
    name = f"{kind.name}-{next(_N)}"
    admin = kube.kube("admin")
    admin.create(kind.group, kind.version, kube.namespace, kind.plural, {
        "apiVersion": f"{kind.group}/{kind.version}", "kind": kind.kind,
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": copy.deepcopy(kind.spec)})
    return Mesh(kind, kube, name, admin)

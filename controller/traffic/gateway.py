"""Gateway API traffic backend: shifts `spec.rules[].backendRefs[].weight` of one HTTPRoute.

Owns failover for clusters steered by the Kubernetes Gateway API
(gateway.networking.k8s.io/v1 HTTPRoute): the named rules (or, with no names, every rule
that references a mapped backend) each reference one backend per site — a backendRef
name, with optional namespace, port, kind (default Service) and group (default core) —
and the backend moves their weights from the primary's backendRef to the backup's (and
back), through `controller.kube` with resourceVersion + conflict retry. The shared rules
(enable first, never total weight 0, exact revert, evidence) live in
`controller.traffic.mesh`.

Gateway API weights are relative; an absent weight means 1 (the API's default).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.traffic.mesh import Group, MeshOptions, MeshTrafficBackend, Obj


class GatewayBackendRef(BaseModel):
    """`backendRefs[]` entry of one site: name (+ namespace, port, kind, group)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, description="the backend's name, e.g. reviews-dc-b")
    namespace: str | None = Field(None, description="when it lives in another namespace")
    port: int | None = Field(None, ge=1, le=65535)
    kind: str = "Service"
    group: str = ""

    def matches(self, ref: Any, route_namespace: str) -> bool:
        if not isinstance(ref, dict) or ref.get("name") != self.name:
            return False
        if ref.get("kind", "Service") != self.kind or ref.get("group", "") != self.group:
            return False
        if self.namespace is not None and ref.get("namespace", route_namespace) != \
                self.namespace:
            return False
        return self.port is None or ref.get("port") == self.port

    def describe(self) -> str:
        return describe(self.model_dump(exclude_none=True))


def describe(ref: Any) -> str:
    if not isinstance(ref, dict):
        return repr(ref)
    namespace = f"{ref['namespace']}/" if ref.get("namespace") else ""
    text = f"{ref.get('kind', 'Service')} {namespace}{ref.get('name')}"
    return text + (f" port {ref['port']}" if ref.get("port") else "")


class GatewayOptions(MeshOptions):
    rules: list[str] = Field(default_factory=list, description="names of the spec.rules[] "
                             "to steer; empty = every rule that references a mapped backend")
    destinations: dict[str, GatewayBackendRef] = Field(
        min_length=2, description="site -> backendRef, e.g. {dc-a: {name: web-dc-a}, "
        "dc-b: {name: web-dc-b}}")

    @model_validator(mode="after")
    def _distinct(self) -> GatewayOptions:
        seen = [d.model_dump_json() for d in self.destinations.values()]
        if len(set(seen)) != len(seen):
            raise ValueError("destinations: two sites map to the same backendRef; give each "
                             "site its own backend")
        return self


class GatewayTrafficBackend(MeshTrafficBackend):
    """TrafficBackend over one Gateway API HTTPRoute."""

    Options = GatewayOptions
    GROUP, VERSION, PLURAL, KIND = "gateway.networking.k8s.io", "v1", "httproutes", \
        "HTTPRoute"
    options: GatewayOptions

    def sites(self) -> list[str]:
        return list(self.options.destinations)

    def _weight(self, entry: Obj, group: Group) -> int:
        return int(entry.get("weight", 1))

    def _groups(self, spec: Obj) -> list[Group]:
        rules = [r for r in spec.get("rules") or [] if isinstance(r, dict)]
        labels = [f'rule "{r["name"]}"' if r.get("name") else f"rules[{i}] (unnamed)"
                  for i, r in enumerate(rules)]
        have = ", ".join(labels) or "no rules"
        ns = self.options.namespace
        refs = self.options.destinations.values()
        if self.options.rules:
            names = [r.get("name") for r in rules]
            missing = [n for n in self.options.rules if n not in names]
            if missing:
                raise self._mismatch(f"no rule named {', '.join(missing)}; it has {have}")
            chosen = [(lab, r) for lab, r in zip(labels, rules, strict=True)
                      if r.get("name") in self.options.rules]
        else:
            chosen = [(lab, r) for lab, r in zip(labels, rules, strict=True)
                      if any(d.matches(e, ns) for d in refs for e in r.get("backendRefs") or [])]
            if not chosen:
                raise self._mismatch(f"no rule references {', '.join(d.describe() for d in refs)}"
                                     f"; it has {have}")
        groups = []
        for label, rule in chosen:
            entries = [e for e in rule.get("backendRefs") or [] if isinstance(e, dict)]
            group = Group(label, entries)
            for site, ref in self.options.destinations.items():
                found = [e for e in entries if ref.matches(e, ns)]
                if len(found) != 1:
                    listed = "; ".join(describe(e) for e in entries)
                    problem = "no backendRef" if not found else "several backendRefs"
                    raise self._mismatch(f"{label} has {problem} {ref.describe()} for site "
                                         f"{site}; it references: {listed or 'nothing'}")
                group.sites[site] = found[0]
            groups.append(group)
        return groups

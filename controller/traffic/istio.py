"""Istio traffic backend: shifts `spec.http[].route[].weight` of one VirtualService.

Owns failover for meshes steered by Istio (networking.istio.io/v1 VirtualService): the
named http routes (or, with no names, every http route that routes to a mapped
destination) each list one destination per site — a host, optionally a subset and a
port — and the backend moves their weights from the primary's destination to the
backup's (and back), through `controller.kube` with resourceVersion + conflict retry.
The shared rules (enable first, never total weight 0, exact revert, evidence) live in
`controller.traffic.mesh`.

Istio's weights are relative; an absent weight means 100 when the route has a single
destination and 0 otherwise, which is how `current()` reads it. A shift writes explicit
weights.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.traffic.mesh import Group, MeshOptions, MeshTrafficBackend, Obj


class IstioDestination(BaseModel):
    """`route[].destination` of one site: host (+ subset, + port number)."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, description="e.g. reviews.prod.svc.cluster.local")
    subset: str | None = Field(None, description="DestinationRule subset, e.g. dc-b")
    port: int | None = Field(None, ge=1, le=65535, description="destination.port.number")

    def matches(self, dest: Any) -> bool:
        if not isinstance(dest, dict) or dest.get("host") != self.host:
            return False
        if dest.get("subset") != self.subset:
            return False
        return self.port is None or (dest.get("port") or {}).get("number") == self.port

    def describe(self) -> str:
        return describe(self.model_dump(exclude_none=True))


def describe(dest: Any) -> str:
    if not isinstance(dest, dict):
        return repr(dest)
    text = str(dest.get("host"))
    if dest.get("subset"):
        text += f" subset {dest['subset']}"
    port = dest.get("port")
    if port:
        text += f" port {port.get('number') if isinstance(port, dict) else port}"
    return text


class IstioOptions(MeshOptions):
    routes: list[str] = Field(default_factory=list, description="names of the spec.http[] "
                              "routes to steer; empty = every http route that routes to a "
                              "mapped destination")
    destinations: dict[str, IstioDestination] = Field(
        min_length=2, description="site -> destination, e.g. {dc-a: {host: reviews, "
        "subset: dc-a}, dc-b: {host: reviews, subset: dc-b}}")

    @model_validator(mode="after")
    def _distinct(self) -> IstioOptions:
        seen = [d.model_dump_json() for d in self.destinations.values()]
        if len(set(seen)) != len(seen):
            raise ValueError("destinations: two sites map to the same destination; give "
                             "each site its own host/subset")
        return self


class IstioTrafficBackend(MeshTrafficBackend):
    """TrafficBackend over one Istio VirtualService."""

    Options = IstioOptions
    GROUP, VERSION, PLURAL, KIND = "networking.istio.io", "v1", "virtualservices", \
        "VirtualService"
    options: IstioOptions

    def sites(self) -> list[str]:
        return list(self.options.destinations)

    def _weight(self, entry: Obj, group: Group) -> int:
        if "weight" in entry:
            return int(entry["weight"])
        return 100 if len(group.entries) == 1 else 0

    def _groups(self, spec: Obj) -> list[Group]:
        http = [r for r in spec.get("http") or [] if isinstance(r, dict)]
        labels = [f'http route "{r["name"]}"' if r.get("name") else f"http[{i}] (unnamed)"
                  for i, r in enumerate(http)]
        have = ", ".join(labels) or "no http routes"
        dests = self.options.destinations.values()
        if self.options.routes:
            names = [r.get("name") for r in http]
            missing = [n for n in self.options.routes if n not in names]
            if missing:
                raise self._mismatch(f"no http route named {', '.join(missing)}; it has "
                                     f"{have}")
            chosen = [(lab, r) for lab, r in zip(labels, http, strict=True)
                      if r.get("name") in self.options.routes]
        else:
            chosen = [(lab, r) for lab, r in zip(labels, http, strict=True)
                      if any(d.matches(e.get("destination")) for d in dests
                             for e in r.get("route") or [])]
            if not chosen:
                raise self._mismatch(f"no http route routes to "
                                     f"{', '.join(d.describe() for d in dests)}; it has "
                                     f"{have}")
        groups = []
        for label, route in chosen:
            entries = [e for e in route.get("route") or [] if isinstance(e, dict)]
            group = Group(label, entries)
            for site, dest in self.options.destinations.items():
                found = [e for e in entries if dest.matches(e.get("destination"))]
                if len(found) != 1:
                    routed = "; ".join(describe(e.get("destination")) for e in entries)
                    problem = "no destination" if not found else "several destinations"
                    raise self._mismatch(f"{label} has {problem} {dest.describe()} for site "
                                         f"{site}; it routes to: {routed or 'nothing'}")
                group.sites[site] = found[0]
            groups.append(group)
        return groups

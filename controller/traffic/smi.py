"""SMI traffic backend: shifts `spec.backends[].weight` of one TrafficSplit.

Owns failover for meshes steered through the Service Mesh Interface
(split.smi-spec.io/v1alpha2 TrafficSplit, e.g. Linkerd, Open Service Mesh): the split's
backends list one Service per site, and the backend moves their weights from the
primary's Service to the backup's (and back), through `controller.kube` with
resourceVersion + conflict retry. The shared rules (enable first, never total weight 0,
exact revert, evidence) live in `controller.traffic.mesh`.

v1alpha2 weights are plain relative integers and required by the API.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from controller.traffic.mesh import Group, MeshOptions, MeshTrafficBackend, Obj


class SmiOptions(MeshOptions):
    destinations: dict[str, str] = Field(
        min_length=2, description="site -> backend Service name, e.g. {dc-a: web-dc-a, "
        "dc-b: web-dc-b}")

    @model_validator(mode="after")
    def _distinct(self) -> SmiOptions:
        if len(set(self.destinations.values())) != len(self.destinations):
            raise ValueError("destinations: two sites map to the same Service; give each "
                             "site its own")
        return self


class SmiTrafficBackend(MeshTrafficBackend):
    """TrafficBackend over one SMI TrafficSplit."""

    Options = SmiOptions
    GROUP, VERSION, PLURAL, KIND = "split.smi-spec.io", "v1alpha2", "trafficsplits", \
        "TrafficSplit"
    options: SmiOptions

    def sites(self) -> list[str]:
        return list(self.options.destinations)

    def _groups(self, spec: Obj) -> list[Group]:
        entries = [b for b in spec.get("backends") or [] if isinstance(b, dict)]
        group = Group(f"split of service {spec.get('service')}", entries)
        for site, service in self.options.destinations.items():
            found = [b for b in entries if b.get("service") == service]
            if len(found) != 1:
                listed = ", ".join(str(b.get("service")) for b in entries) or "nothing"
                problem = "no backend" if not found else "several backends"
                raise self._mismatch(f"{group.label} has {problem} {service} for site "
                                     f"{site}; its backends are: {listed}")
            group.sites[site] = found[0]
        return [group]

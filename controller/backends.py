"""Builds a plan's configured backends and probes, lazily and once per engine.

Only the kinds a plan names are imported (see `registry`). Building a backend may read
secrets; those values never leave the backend object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller import registry
from controller.plan import FailoverPlan, ProbeSpec
from controller.secrets import Secrets

_AUDITED = ("store", "restorer", "verifier")


class Backends:
    def __init__(self, plan: FailoverPlan, *, secrets: Secrets | None = None,
                 audit: Callable[..., None] | None = None):
        self.plan = plan
        self.secrets = secrets or Secrets()
        self.audit = audit  # the journal's audit: backup stores and restorers record to it
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._built:
            spec = self.plan.spec.backend(name)
            extra = {"audit": self.audit} if spec.role in _AUDITED else {}
            self._built[name] = registry.build(spec.role, spec.kind, spec.options,
                                               secrets=self.secrets, **extra)
        return self._built[name]

    def probe(self, owner: str, spec: ProbeSpec) -> Any:
        return registry.build("probe", spec.kind, spec.options, secrets=self.secrets,
                              service=owner)

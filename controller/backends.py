"""Builds a plan's configured backends and probes, lazily and once per engine.

Only the kinds a plan names are imported (see `registry`). Building a backend may read
secrets; those values never leave the backend object. Callers ask by role
(`backends.traffic(name) -> TrafficBackend`, `.dns`, `.store`, `.restorer`, `.verifier`,
`.notifier`, `.database`, `.probe`): the accessor checks that the plan configures `name`
in that role and that the built object implements the role's protocol, so a step handed a
backend of another role fails with a message naming both, before it calls anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller import registry
from controller.backups import BackupStore, Restorer, Verifier
from controller.db import Database
from controller.dns import DnsProvider
from controller.model import PermanentError
from controller.notify import Notifier
from controller.plan import FailoverPlan, ProbeSpec
from controller.probes import Probe
from controller.secrets import Secrets
from controller.traffic import TrafficBackend

_AUDITED = ("store", "restorer", "verifier")


class Backends:
    def __init__(self, plan: FailoverPlan, *, secrets: Secrets | None = None,
                 audit: Callable[..., None] | None = None):
        self.plan = plan
        self.secrets = secrets or Secrets()
        self.audit = audit  # the journal's audit: backup stores and restorers record to it
        self._built: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The backend `name`, whatever its role (prefer the typed accessors below)."""
        if name not in self._built:
            spec = self.plan.spec.backend(name)
            extra = {"audit": self.audit} if spec.role in _AUDITED else {}
            self._built[name] = registry.build(spec.role, spec.kind, spec.options,
                                               secrets=self.secrets, **extra)
        return self._built[name]

    def _of_role(self, name: str, role: str) -> Any:
        spec = self.plan.spec.backend(name)
        if spec.role != role:
            raise PermanentError(f"backend {name!r} is a {spec.role} backend ({spec.kind}), "
                                 f"not a {role} backend: name a backend with `role: {role}`")
        return self.get(name)

    def _wrong(self, name: str, protocol: str) -> PermanentError:
        return PermanentError(f"backend {name!r} ({self.plan.spec.backend(name).kind}) does "
                              f"not implement {protocol}: its kind is registered under the "
                              "wrong role")

    def traffic(self, name: str) -> TrafficBackend:
        if isinstance(built := self._of_role(name, "traffic"), TrafficBackend):
            return built
        raise self._wrong(name, "TrafficBackend")

    def dns(self, name: str) -> DnsProvider:
        if isinstance(built := self._of_role(name, "dns"), DnsProvider):
            return built
        raise self._wrong(name, "DnsProvider")

    def store(self, name: str) -> BackupStore:
        if isinstance(built := self._of_role(name, "store"), BackupStore):
            return built
        raise self._wrong(name, "BackupStore")

    def restorer(self, name: str) -> Restorer:
        if isinstance(built := self._of_role(name, "restorer"), Restorer):
            return built
        raise self._wrong(name, "Restorer")

    def verifier(self, name: str) -> Verifier:
        if isinstance(built := self._of_role(name, "verifier"), Verifier):
            return built
        raise self._wrong(name, "Verifier")

    def notifier(self, name: str) -> Notifier:
        if isinstance(built := self._of_role(name, "notifier"), Notifier):
            return built
        raise self._wrong(name, "Notifier")

    def database(self, name: str) -> Database:
        if isinstance(built := self._of_role(name, "database"), Database):
            return built
        raise self._wrong(name, "Database")

    def probe(self, owner: str, spec: ProbeSpec) -> Probe:
        """A new probe of `spec` for `owner` (the service or signal it checks)."""
        probe = registry.build("probe", spec.kind, spec.options, secrets=self.secrets,
                               service=owner)
        if not isinstance(probe, Probe):
            raise PermanentError(f"probe kind {spec.kind!r} does not implement Probe")
        return probe

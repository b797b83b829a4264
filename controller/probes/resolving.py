"""The base of probes that look host names up (HTTP, TCP): the scheduler's shared
resolver when it hands one over (`use_resolver`), else the process-wide one. Apart from
`resolve` so the resolver needs nothing of the probes."""

from __future__ import annotations

from controller.probes import Probe
from controller.probes.resolve import ProbeResolver, default_resolver


class ResolverUser(Probe):
    """A probe that looks host names up: the process-wide resolver unless given one."""

    _resolver: ProbeResolver | None = None

    def use_resolver(self, resolver: ProbeResolver) -> None:
        self._resolver = resolver

    @property
    def resolver(self) -> ProbeResolver:
        return self._resolver or default_resolver()

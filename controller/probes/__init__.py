"""Health probes: the `Probe` protocol and the lazy registry of probe kinds.

A probe checks one service once and returns an immutable `Sample`; it never raises for a
failed check (the failure *is* the sample). Probes run concurrently on one asyncio loop.
What the scheduler shares with its probes (the target's timeout, the resolver, one pooled
HTTP session) is offered through `Probe` methods whose defaults ignore it: every probe
kind subclasses `Probe` and overrides only what it uses, so nothing is found by probing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from controller.model import Sample

if TYPE_CHECKING:
    import aiohttp

    from controller.probes.resolve import ProbeResolver

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeProbe",
    "http": "controller.probes.http:HttpProbe",
    "tcp": "controller.probes.tcp:TcpProbe",
    "dns": "controller.probes.dns:DnsProbe",
    "postgres": "controller.probes.postgres:PostgresProbe",
    "prometheus": "controller.probes.prometheus:PrometheusProbe",
}


@runtime_checkable
class Probe(Protocol):
    service: str
    uses_session: ClassVar[bool] = False
    """True for a probe that talks HTTP: the scheduler hands it its pooled session."""

    async def check(self) -> Sample:
        """Check once; a failed check is a failing sample, never an exception."""
        ...

    def limit_timeout(self, seconds: float) -> None:
        """The scheduler gives this probe at most `seconds`; a probe that bounds work
        outside this process (a database statement) bounds it by that. Default: nothing
        outside the process to bound."""
        return

    def use_resolver(self, resolver: ProbeResolver) -> None:
        """Look host names up with `resolver`. Default: the probe resolves no names."""
        return

    def use_session(self, session: aiohttp.ClientSession) -> None:
        """Send HTTP through `session` (only called when `uses_session`)."""
        return

    async def aclose(self) -> None:
        """Close what the probe opened itself. Default: it opened nothing."""
        return

"""Health probes: the `Probe` protocol and the lazy registry of probe kinds.

A probe checks one service once and returns an immutable `Sample`; it never raises for a
failed check (the failure *is* the sample). Probes run concurrently on one asyncio loop.
"""

from __future__ import annotations

from typing import Protocol

from controller.model import Sample

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeProbe",
    "http": "controller.probes.http:HttpProbe",
    "tcp": "controller.probes.tcp:TcpProbe",
    "dns": "controller.probes.dns:DnsProbe",
    "postgres": "controller.probes.postgres:PostgresProbe",
    "prometheus": "controller.probes.prometheus:PrometheusProbe",
}


class Probe(Protocol):
    service: str

    async def check(self) -> Sample: ...

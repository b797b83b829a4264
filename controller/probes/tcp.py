"""TCP connect probe, and `describe_error`: the short failure reasons every probe shares.

A TCP probe succeeds when a connection to host:port completes within its timeout. It is
the cheapest liveness check for anything that speaks TCP (a load balancer, a database
port, an SMTP relay). The host name is looked up by `ProbeResolver` on the loop (see
`controller/probes/resolve.py`: never on a thread pool a dead nameserver could exhaust),
then its addresses are tried in turn, IPv4 first, within the one timeout.

`describe_error` turns the exceptions a network check can raise into the short,
secret-free reasons that end up in a failed `Sample.detail` and, from there, in the
policy's status sentence ("api down: 3 failed probes in a row (connection refused)").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.model import Sample
from controller.plan import Duration
from controller.probes.resolving import ResolverUser
from controller.secrets import redact

DETAIL_MAX = 200


def describe_error(exc: BaseException, *, timeout: float | None = None) -> str:
    """A short human reason for a failed check; never includes a revealed secret."""
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"timed out after {timeout:g} s" if timeout is not None else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "host unreachable" if exc.errno == errno.EHOSTUNREACH else "network unreachable"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return short(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def short(text: str) -> str:
    """Redact secrets and cut a detail to one bounded line."""
    line = " ".join(redact(text).split())
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 1] + "…"


def failed(service: str, at: float, start: float, text: str) -> Sample:
    """A failed sample: when it was taken, how long it took, a short secret-free reason."""
    return Sample(service, False, at, latency=time.monotonic() - start, detail=short(text))


class TcpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    host: str
    port: int = Field(ge=1, le=65535)
    timeout: Duration = Field(5.0, description="connect timeout")


class TcpProbe(ResolverUser):
    """Succeeds when a TCP connection to host:port opens within the timeout."""

    Options = TcpOptions

    def __init__(self, options: TcpOptions, *, secrets: Any = None, service: str = ""):
        self.options, self.service = options, service

    async def _connect(self) -> asyncio.StreamWriter:
        last: OSError | None = None
        for address in await self.resolver.addresses(self.options.host):  # never empty
            try:
                _, writer = await asyncio.open_connection(address, self.options.port)
                return writer
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    async def check(self) -> Sample:
        opts = self.options
        start = time.monotonic()
        at = time.time()
        writer = None
        try:
            async with asyncio.timeout(opts.timeout):
                writer = await self._connect()
        except Exception as exc:
            return Sample(self.service, False, at, latency=time.monotonic() - start,
                          detail=short(f"tcp {opts.host}:{opts.port}: "
                                       + describe_error(exc, timeout=opts.timeout)))
        latency = time.monotonic() - start
        writer.close()
        with contextlib.suppress(OSError):  # a reset on close does not undo the connect
            await writer.wait_closed()
        return Sample(self.service, True, at, latency=latency,
                      detail=f"tcp {opts.host}:{opts.port} connected")

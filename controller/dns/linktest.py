"""The DNS step's link test: reach the service through the record's NEW address.

The all-server verification proves that DNS answers with the new address; the link test
proves that the service answers there. For each new address of the tested A/AAAA record
it runs the probes the controller already has (`controller.probes.http`, `.tcp`):

- **http**: the URL keeps the service's name, so the Host header, the TLS SNI and the
  certificate check all use the name, while a pinned resolver makes aiohttp connect to
  the new address (never to whatever a resolver would answer, which may still be the old
  address for the old TTL);
- **tcp**: a connection to new-address:port.

Every address must pass. The evidence lists each address with its outcome, status (http)
and latency; a failure raises `LinkTestFailed` (a transient error: the executor retries
the step within its budget, and the retried step finds the records already written).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from controller.model import Evidence, Record, Sample
from controller.plan import LinkTest
from controller.probes.http import USER_AGENT, HttpOptions, HttpProbe, where
from controller.probes.tcp import TcpOptions, TcpProbe, short

_STATUS = re.compile(r"(?::|status) (\d{3})\b")


class LinkTestFailed(RuntimeError):
    """The records are served everywhere, but the service does not answer at the new
    address as expected (retried within the step's budget, like other transient errors)."""


class PinnedResolver(AbstractResolver):
    """Resolves exactly one name to one address; any other name is refused."""

    def __init__(self, name: str, address: str):
        self.name = name.lower().rstrip(".")
        self.address = address
        self.family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 \
            else socket.AF_INET

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self.name:
            raise OSError(f"link test: {host} is not the tested name {self.name}")
        return [ResolveResult(hostname=host, host=self.address, port=port, family=self.family,
                              proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def _url(spec: LinkTest) -> str:
    """The url with `host` (if given) as its host name: Host header and SNI."""
    assert spec.url is not None
    parts = urlsplit(spec.url)
    if not spec.host:
        return spec.url
    netloc = spec.host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _http(spec: LinkTest, address: str) -> Sample:
    url = _url(spec)
    name = urlsplit(url).hostname or ""
    probe = HttpProbe(HttpOptions.model_validate({
        "url": url, "expectStatus": spec.expect_status, "timeout": spec.timeout,
        "verifyTls": spec.verify_tls, "caFile": spec.ca_file}), service="link-test")
    connector = aiohttp.TCPConnector(resolver=PinnedResolver(name, address),
                                     use_dns_cache=False, limit=1, force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"User-Agent": USER_AGENT}) as session:
        probe.use_session(session)
        return await probe.check()


async def _tcp(spec: LinkTest, address: str) -> Sample:
    assert spec.port is not None
    probe = TcpProbe(TcpOptions(host=address, port=spec.port, timeout=spec.timeout),
                     service="link-test")
    return await probe.check()


def _result(spec: LinkTest, address: str, sample: Sample) -> Evidence:
    out: Evidence = {"address": address, "ok": sample.ok,
                     "latencySeconds": round(sample.latency or 0.0, 6),
                     "detail": short(sample.detail)}
    if spec.kind == "http":
        found = _STATUS.search(sample.detail)
        out["status"] = int(found.group(1)) if found else None
    else:
        out["port"] = spec.port
    return out


def run_link_test(spec: LinkTest, record: Record) -> Evidence:
    """Check the service through every value of `record` (the new A/AAAA set).

    Returns the evidence when every address passes; raises `LinkTestFailed` naming each
    failing address and why. Runs on a private event loop (steps run in a worker thread).
    """
    check = _http if spec.kind == "http" else _tcp

    async def all_addresses() -> list[Evidence]:
        samples = await asyncio.gather(*(check(spec, a) for a in record.values))
        return [_result(spec, a, s) for a, s in zip(record.values, samples, strict=True)]

    started = time.monotonic()
    results = asyncio.run(all_addresses())
    target = where(_url(spec)) if spec.kind == "http" else f"tcp port {spec.port}"
    evidence: Evidence = {
        "kind": spec.kind, "target": target, "record": f"{record.name} {record.type}",
        "results": results, "seconds": round(time.monotonic() - started, 6),
    }
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise LinkTestFailed(
            f"link test through the new address failed ({record.name} {record.type} is "
            f"served by every authoritative server): " + "; ".join(
                f"{r['address']}: {r['detail']}" for r in failed))
    return evidence

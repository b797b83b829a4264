"""DNS probe on dnspython's async resolver: the answer must match what is expected.

After a cutover the question is not "does DNS answer" but "does it answer the *right*
address", so the probe compares the answer's values with `expect` (all of them by default,
or any one with `match: any`). Without `expect` any non-empty answer is a success. It asks
the given nameservers directly (no search list, no cache) so a stale resolver cache can
never mask an outage; NXDOMAIN, an empty answer, SERVFAIL, a timeout or a wrong address
each become a failed sample with that reason.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.model import Sample
from controller.plan import Duration
from controller.probes import Probe
from controller.probes.tcp import describe_error, failed


class DnsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    type: str = "A"
    nameservers: list[str] = Field(
        default_factory=list, description="IP addresses to ask; empty = the system resolver")
    port: int = Field(53, ge=1, le=65535)
    expect: list[str] = Field(default_factory=list,
                              description="expected values, e.g. the backup site's address")
    match: Literal["all", "any"] = Field(
        "all", description="all: the answer is exactly `expect`; any: it contains one of them")
    timeout: Duration = 5.0
    tcp: bool = False

    @field_validator("type")
    @classmethod
    def _rdtype(cls, value: str) -> str:
        try:
            dns.rdatatype.from_text(value.upper())
        except dns.rdatatype.UnknownRdatatype:
            raise ValueError(f"unknown DNS record type {value!r}") from None
        return value.upper()


def normalise(value: str) -> str:
    """Compare names case-insensitively and with or without the trailing dot."""
    return value.strip().lower().rstrip(".")


class DnsProbe(Probe):
    """Resolve `name`/`type` at the given nameservers and compare with `expect`."""

    Options = DnsOptions

    def __init__(self, options: DnsOptions, *, secrets: Any = None, service: str = ""):
        self.options, self.service = options, service
        if options.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(options.nameservers)
            resolver.port = options.port
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.cache = None
        resolver.lifetime = options.timeout
        resolver.timeout = options.timeout
        self._resolver = resolver
        self._expect = {normalise(v) for v in options.expect}
        self._label = f"dns {options.name} {options.type}"
        self._asked = (", ".join(f"{ns}:{options.port}" for ns in options.nameservers)
                       or "the system resolver's nameservers")

    def _fail(self, at: float, start: float, why: str) -> Sample:
        return failed(self.service, at, start, f"{self._label}: {why}")

    async def check(self) -> Sample:
        opts = self.options
        at, start = time.time(), time.monotonic()
        try:
            answer = await self._resolver.resolve(opts.name, opts.type, tcp=opts.tcp,
                                                  search=False, raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN:
            return self._fail(at, start, "NXDOMAIN (name does not exist)")
        except dns.resolver.NoAnswer:
            return self._fail(at, start, "no answer of that type")
        except dns.resolver.NoNameservers as exc:
            return self._fail(at, start, f"no nameserver answered ({_servfail(exc)})")
        except dns.exception.Timeout:
            return self._fail(at, start, f"timed out after {opts.timeout:g} s asking "
                                         f"{self._asked}")
        except Exception as exc:
            return self._fail(at, start, describe_error(exc, timeout=opts.timeout))
        latency = time.monotonic() - start
        got = sorted(normalise(rd.to_text()) for rd in answer)
        if self._expect:
            found = set(got)
            ok = found == self._expect if opts.match == "all" else bool(found & self._expect)
            if not ok:
                want = ", ".join(sorted(self._expect))
                return self._fail(at, start, f"answered {', '.join(got)}; expected "
                                             f"{'one of ' if opts.match == 'any' else ''}{want}")
        return Sample(self.service, True, at, latency=latency,
                      detail=f"{self._label}: {', '.join(got)}")


def _servfail(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    for err in errors:
        # each entry: (nameserver, tcp, port, exception-or-rcode, answer)
        if len(err) >= 4 and err[3] is not None:
            return str(err[3])[:80]
    return "SERVFAIL or REFUSED"

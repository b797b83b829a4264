"""DNS cutover: the `DnsProvider` protocol and the lazy registry of providers.

Writes are compare-and-swap: `apply` succeeds only if the server still holds `expected`
(RFC 2136 prerequisites; Route 53 DELETE+CREATE of the exact old value in one batch) and
never leaves a name with an empty record set; `delete` removes a record set only if it
still holds exactly the expected values (a record a step created is removed on revert,
never one somebody changed since). Success is proven, never assumed: `apply`, `delete`
and `verify` return only once every authoritative server serves the result (RFC 2136:
each server asked directly; Route 53: INSYNC). Every write is preceded by
`fencing.check()`, so a step that must stop never writes again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from controller.model import Evidence, Record

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeDnsProvider",
    "rfc2136": "controller.dns.rfc2136:Rfc2136DnsProvider",
    "route53": "controller.dns.route53:Route53DnsProvider",
}


class DnsConflict(Exception):
    """The server's records are not what the caller expected; nothing was changed."""


class DnsNotServed(TimeoutError):
    """The records are in place at the source but not proven served everywhere in time."""


def canonical(rdtype: str, value: str) -> str:
    """A value as dnspython writes it (absolute names), so equal data compares equal."""
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype),
                                    value, origin=dns.name.root)
        return str(rdata.to_text())
    except (dns.exception.DNSException, ValueError):
        return value.strip()


def canonical_values(rdtype: str, values: Iterable[str]) -> frozenset[str]:
    return frozenset(canonical(rdtype, str(v)) for v in values)


def absent(rec: Record) -> Record:
    """`rec`'s key with no values: what `verify` proves is not served (a deleted set)."""
    return Record(rec.key()[0], rec.type.upper(), 0, ())


@runtime_checkable
class DnsProvider(Protocol):
    def records(self, *, names: list[str] | None = None) -> list[Record]:
        """The record sets at `names` (every name when None) as the source serves them."""
        ...

    def apply(self, *, expected: list[Record], desired: list[Record]) -> Evidence:
        """Swap `expected` for `desired` atomically (DnsConflict, nothing changed, if the
        source no longer holds `expected`; an empty expected value list = must not exist),
        then return once every authoritative server serves `desired`."""
        ...

    def delete(self, *, expected: list[Record]) -> Evidence:
        """Remove each record set only if it still holds exactly `expected`'s values, in
        one all-or-nothing change; a set already absent is reported (`alreadyAbsent`),
        not an error, so a re-run after a crash succeeds. A set holding other values
        raises DnsConflict and nothing is deleted. Returns once no authoritative server
        serves the deleted sets."""
        ...

    def verify(self, *, desired: list[Record]) -> Evidence:
        """Prove, for a write that may have landed earlier (a resumed or re-run step),
        that `desired` is what the source holds and every authoritative server serves:
        a record with no values must be absent. Raises DnsConflict when the source holds
        something else, DnsNotServed when it is not served within the provider's
        deadline; the evidence names the proof (RFC 2136: each server's answer and
        serial; Route 53: the change id that went INSYNC)."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None

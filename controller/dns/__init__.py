"""DNS cutover: the `DnsProvider` protocol and the lazy registry of providers.

Writes are compare-and-swap: `apply` succeeds only if the server still holds `expected`
(RFC 2136 prerequisites; Route 53 DELETE+CREATE of the exact old value in one batch) and
never leaves a name with an empty record set.
"""

from __future__ import annotations

from typing import Protocol

from controller.model import Evidence, Record

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeDnsProvider",
    "rfc2136": "controller.dns.rfc2136:Rfc2136DnsProvider",
    "route53": "controller.dns.route53:Route53DnsProvider",
}


class DnsConflict(Exception):
    """The server's records are not what the caller expected; nothing was changed."""


class DnsProvider(Protocol):
    def records(self, *, names: list[str] | None = None) -> list[Record]: ...

    def apply(self, *, expected: list[Record], desired: list[Record]) -> Evidence: ...

"""Reading an RFC 2136 zone: its records, its serial, and who serves it.

Owns every read the RFC 2136 provider makes, so writing and verifying build on one view
of the zone. Why each rule:

- **Straight to the server, no recursion**: each query goes to one named server with RD
  cleared, so an answer is that server's own data, never a resolver's cache. A timeout,
  an unreadable answer and an unreachable server are told apart and name the server, so
  the caller knows whether a retry can help (`DnsServerError` for transient answers).
- **Whole RRsets**: `records` reads names with ANY over TCP at the primary (no truncation)
  or the whole zone by a TSIG-signed AXFR, merging an RRset split across transfer
  messages; SOA and DNSSEC types are skipped (the server keeps those itself).
- **Parsed once, in the zone**: a record is parsed into its owner, type and exact rdata
  set (`Want`) before anything is sent; a name outside the zone or a bad value is refused
  with the record named, so nothing half-valid reaches an update.
- **The servers to verify**: the ones listed in options, else the zone's NS set (glue, an
  in-zone address, or a lookup), grouped by address so a server with two names is asked
  once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.tsig

from controller.dns.rfc2136_options import (
    Nameserver,
    Rfc2136Options,
    load_tsig_secret,
    rejected_key,
)
from controller.model import PermanentError, Record
from controller.secrets import Secrets, remember

_SKIP_TYPES = {dns.rdatatype.SOA, dns.rdatatype.RRSIG, dns.rdatatype.NSEC,
               dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM, dns.rdatatype.DNSKEY,
               dns.rdatatype.CDS, dns.rdatatype.CDNSKEY, dns.rdatatype.TYPE0}


class DnsServerError(RuntimeError):
    """The server answered with a transient error (SERVFAIL...); retrying may help."""


@dataclass(frozen=True)
class Want:
    """One desired RRset, parsed: owner, type and the exact rdata set."""

    record: Record
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdatas: frozenset[dns.rdata.Rdata]


def values_of(rdatas: Any) -> tuple[str, ...]:
    return tuple(sorted(r.to_text() for r in rdatas))


def describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout | TimeoutError):
        return "no answer (timeout)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Rfc2136Zone:
    """One zone read from its primary `server` (zone transfers signed with the TSIG key)."""

    def __init__(self, options: Rfc2136Options, *, secrets: Secrets | None = None):
        self.options = options
        self.zone = dns.name.from_text(options.zone)
        ref = options.tsig.secret
        raw = (secrets or Secrets()).reveal(ref)
        secret = load_tsig_secret(raw, key_name=options.tsig.name, where=ref.describe())
        remember(secret)  # a key file was remembered whole; the bare secret must redact too
        self._key = dns.tsig.Key(options.tsig.name, secret, options.tsig.algorithm)
        self.primary = Nameserver(address=options.server, port=options.port, name="primary")

    def _query(self, server: Nameserver, name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
               *, tcp: bool = False) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        where = f"{server.label} {server.address}:{server.port}"
        try:
            if tcp:
                return dns.query.tcp(query, server.address, timeout=self.options.timeout,
                                     port=server.port)
            response, _ = dns.query.udp_with_fallback(query, server.address,
                                                      timeout=self.options.timeout,
                                                      port=server.port)
        except dns.exception.Timeout:  # name the server: the caller may retry or report
            raise TimeoutError(f"{where} did not answer a query for {name} "
                               f"{dns.rdatatype.to_text(rdtype)} within "
                               f"{self.options.timeout:g} s") from None
        except dns.exception.DNSException as exc:  # garbled, truncated, not a reply to us
            raise DnsServerError(f"{where} sent an answer that cannot be read for {name}: "
                                 f"{describe(exc)}") from None
        except OSError as exc:
            raise ConnectionError(f"{where} unreachable: {describe(exc)}") from None
        return response

    def records(self, *, names: list[str] | None = None) -> list[Record]:
        """RRsets at `names` (ANY over TCP at the primary), or the whole zone by signed AXFR."""
        found: dict[tuple[str, str], Record] = {}
        if names is None:
            try:
                for message in dns.query.xfr(
                        self.options.server, self.zone, port=self.options.port,
                        keyring={self._key.name: self._key}, keyname=self._key.name,
                        lifetime=self.options.timeout, relativize=False):
                    for rrset in message.answer:
                        self._collect(found, rrset.name, rrset)
            except dns.tsig.PeerError as exc:
                raise PermanentError(rejected_key(self.options, exc)) from None
            except dns.exception.FormError as exc:
                raise PermanentError(
                    f"primary {self.options.server}:{self.options.port} refused a zone "
                    f"transfer of {self.options.zone} with key {self.options.tsig.name!r} "
                    f"({exc}); allow the key to transfer (allow-transfer) or pass `names`"
                ) from None
        else:
            for text in sorted({n.lower().rstrip(".") + "." for n in names}):
                name = dns.name.from_text(text)
                if not name.is_subdomain(self.zone):
                    continue
                response = self._query(self.primary, name, dns.rdatatype.ANY, tcp=True)
                self._check_read(response, name)
                for rrset in response.answer:
                    if rrset.name == name:
                        self._collect(found, name, rrset)
        return [found[k] for k in sorted(found)]

    @staticmethod
    def _collect(found: dict[tuple[str, str], Record], name: dns.name.Name,
                 rdataset: Any) -> None:
        if rdataset.rdtype in _SKIP_TYPES:
            return
        rec = Record(name.to_text().lower(), dns.rdatatype.to_text(rdataset.rdtype),
                     int(rdataset.ttl), values_of(rdataset))
        have = found.get(rec.key())  # a zone transfer may split one RRset over messages
        if have is not None:
            rec = Record(rec.name, rec.type, rec.ttl, tuple(sorted({*have.values, *rec.values})))
        found[rec.key()] = rec

    def _check_read(self, response: dns.message.Message, name: dns.name.Name) -> None:
        rcode = response.rcode()
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return
        if rcode == dns.rcode.REFUSED:
            raise PermanentError(f"primary {self.options.server}:{self.options.port} refused "
                                 f"to answer for {name}: is it authoritative for zone "
                                 f"{self.options.zone}? (check `zone` and `server`)")
        raise DnsServerError(f"primary {self.options.server}:{self.options.port} answered "
                             f"{dns.rcode.to_text(rcode)} for {name}")

    def _serial(self, server: Nameserver) -> int:
        response = self._query(server, self.zone, dns.rdatatype.SOA)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        raise DnsServerError(f"{server.label} did not answer the SOA of {self.options.zone} "
                             f"({dns.rcode.to_text(response.rcode())}): not authoritative?")

    def _answer(self, server: Nameserver, want: Want) -> frozenset[dns.rdata.Rdata]:
        response = self._query(server, want.name, want.rdtype)
        for rrset in response.answer:
            if rrset.name == want.name and rrset.rdtype == want.rdtype:
                return frozenset(rrset)
        return frozenset()

    def _parse(self, rec: Record) -> Want:
        where = f"record {rec.name} {rec.type}"
        try:
            name = dns.name.from_text(rec.name.strip().rstrip(".") + ".")
            rdtype = dns.rdatatype.from_text(rec.type.upper())
        except dns.exception.DNSException as exc:
            raise PermanentError(f"{where}: {exc}") from None
        if not name.is_subdomain(self.zone):
            raise PermanentError(f"{where}: {name} is outside zone {self.options.zone}; "
                                 "use a backend whose zone holds it")
        rdatas = set()
        for value in rec.values:
            try:
                rdatas.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, value,
                                               origin=dns.name.root))
            except (dns.exception.DNSException, ValueError) as exc:
                raise PermanentError(f"{where}: value {value!r} is not valid ({exc})") from None
        return Want(rec, name, rdtype, frozenset(rdatas))
    def nameservers(self) -> list[Nameserver]:
        """The servers to verify: from options, else the zone's NS set (glue or lookup)."""
        if self.options.nameservers:
            return list(self.options.nameservers)
        response = self._query(self.primary, self.zone, dns.rdatatype.NS)
        glue = {rrset.name: rrset[0].address for rrset in response.additional
                if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)}
        by_address: dict[tuple[str, int], list[str]] = {}
        for rrset in response.answer:
            if rrset.rdtype != dns.rdatatype.NS:
                continue
            for ns in sorted(rrset, key=lambda r: r.target.to_text()):
                address = glue.get(ns.target) or self._address_of(ns.target)
                by_address.setdefault((address, self.options.port), []).append(
                    ns.target.to_text())
        if not by_address:
            raise PermanentError(f"zone {self.options.zone} has no NS set at the primary; "
                                 "list the servers to verify in `nameservers`")
        return [Nameserver(address=a, port=p, name="/".join(n))
                for (a, p), n in by_address.items()]

    def _address_of(self, target: dns.name.Name) -> str:
        if target.is_subdomain(self.zone):
            response = self._query(self.primary, target, dns.rdatatype.A)
            for rrset in response.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    return str(rrset[0].address)
        try:
            return str(dns.resolver.resolve(target, "A", lifetime=self.options.timeout)[0])
        except dns.exception.DNSException as exc:
            raise PermanentError(f"cannot find the address of nameserver {target} "
                                 f"({describe(exc)}); list it in `nameservers`") from None

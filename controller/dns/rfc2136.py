"""RFC 2136 DNS provider (dnspython): TSIG-signed compare-and-swap updates, verified everywhere.

Owns DNS cutover against any authoritative server that takes dynamic updates (BIND,
Knot, PowerDNS...). Why each rule:

- **Compare-and-swap**: each update carries, per record, a value-dependent prerequisite
  (RFC 2136 §2.4.2: "this RRset exists with exactly these values") or, when nothing was
  expected, "this RRset does not exist". The server applies the whole message or nothing,
  so a change made by someone else between our read and our write makes the update fail
  (`DnsConflict`, nothing overwritten) instead of being silently replaced.
- **Never empty**: desired values must be non-empty, and the swap is one delete-and-add
  (`replace`) inside that single atomic message, so no query ever sees an empty RRset.
- **TSIG**: every update (and zone transfer) is signed; the secret comes from a SecretRef
  (a bare base64 secret or a `tsig-keygen` key file) and never reaches a message. A
  rejected key is reported by its name and the server's TSIG error (BADSIG, BADKEY...).
- **Compare-and-delete**: `delete` removes an RRset only under the prerequisite "this
  RRset exists with exactly these values" (a record a step created, removed on revert);
  a set already gone is reported, not an error, so a re-run after a crash succeeds.
- **Fenced**: every update is sent only after `fencing.check()`, and the verification
  waits with the step's pause (`fencing.pause`), so a step that timed out or lost its
  lease never writes again and stops waiting at once.
- **Verified everywhere**: after the write the primary must serve the new values at once,
  then every authoritative server (listed in options, or the zone's NS set) is asked
  directly until it serves the new values with at least the new SOA serial, within a
  deadline; a server that does not is named in the timeout. Each server's answer, serial,
  attempts and delay go into the evidence, with the time until which clients may still
  use the old values (now + old TTL).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
import time
from collections.abc import Callable
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
import dns.update
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller import fencing
from controller.dns import DnsConflict, DnsNotServed, DnsProvider
from controller.model import Evidence, PermanentError, Record
from controller.plan import Duration
from controller.secrets import SecretError, SecretRef, Secrets, remember

ALGORITHMS = ("hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
_SKIP_TYPES = {dns.rdatatype.SOA, dns.rdatatype.RRSIG, dns.rdatatype.NSEC,
               dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM, dns.rdatatype.DNSKEY,
               dns.rdatatype.CDS, dns.rdatatype.CDNSKEY, dns.rdatatype.TYPE0}
_CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN,
                    dns.rcode.YXDOMAIN}
# verification polls a lagging server every millisecond while a transfer on a healthy
# network would land (one UDP query: nothing to a DNS server), then backs off
POLL_FAST, POLL_FAST_FOR, POLL_SLOW = 0.001, 0.05, 0.1
_KEY_FILE = re.compile(r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>.*?)\}\s*;', re.S)


def _ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IP address; updates and queries go "
                         "straight to a server, so give its address (e.g. 192.0.2.53)") from None


class Nameserver(BaseModel):
    """One authoritative server to verify: its address, port and a label for evidence."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    address: str
    port: int = Field(53, ge=1, le=65535)
    name: str | None = Field(None, description="label in evidence; default address:port")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip(value, "nameservers[].address")

    @property
    def label(self) -> str:
        return self.name or f"{self.address}:{self.port}"


class TsigOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, description="key name as the server knows it")
    algorithm: str = "hmac-sha256"
    secret: SecretRef = Field(description="base64 secret or a tsig-keygen key file")

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        value = value.lower().rstrip(".")
        if value not in ALGORITHMS:
            raise ValueError(f"tsig.algorithm {value!r} is not accepted; use one of "
                             f"{', '.join(ALGORITHMS)} (hmac-md5 and hmac-sha1 are too weak)")
        return value


class Rfc2136Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    zone: str = Field(description="the zone to update, e.g. example.com")
    server: str = Field(description="IP address of the zone's primary (takes the updates)")
    port: int = Field(53, ge=1, le=65535)
    tsig: TsigOptions
    nameservers: list[Nameserver] = Field(
        default_factory=list,
        description="authoritative servers to verify; empty = the zone's NS set at `port`")
    timeout: Duration = Field(5.0, gt=0, description="per query or update")
    verify_timeout: Duration = Field(30.0, gt=0, alias="verifyTimeout",
                                     description="every server must serve the new values")

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            name = dns.name.from_text(value.strip().rstrip(".") + ".")
        except dns.exception.DNSException as exc:
            raise ValueError(f"zone: {value!r} is not a DNS name ({exc})") from None
        if name == dns.name.root:
            raise ValueError("zone: the root zone cannot be updated; give e.g. example.com")
        return name.to_text().lower()

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        return _ip(value, "server")


class DnsVerificationTimeout(DnsNotServed):
    """The write succeeded but not every authoritative server served it within the deadline."""


class DnsServerError(RuntimeError):
    """The server answered with a transient error (SERVFAIL...); retrying may help."""


@dataclass(frozen=True)
class _Want:
    """One desired RRset, parsed: owner, type and the exact rdata set."""

    record: Record
    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdatas: frozenset[dns.rdata.Rdata]


def load_tsig_secret(text: str, *, key_name: str, where: str) -> str:
    """The base64 secret from a bare secret or a BIND key file; errors never quote it."""
    text = text.strip()
    match = _KEY_FILE.search(text)
    if match:
        found = match.group("name").rstrip(".")
        if found.lower() != key_name.rstrip(".").lower():
            raise SecretError(f"secret {where} holds key {found!r}, but tsig.name is "
                              f"{key_name!r}; set tsig.name to {found!r} or use that key's file")
        secret = re.search(r'secret\s+"([^"]+)"', match.group("body"))
        if not secret:
            raise SecretError(f"secret {where}: key {found!r} has no `secret \"...\";` line")
        text = secret.group(1)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"secret {where} is not a TSIG secret: expected base64 or a "
                          "tsig-keygen key file") from None
    return text


def _values(rdatas: Any) -> tuple[str, ...]:
    return tuple(sorted(r.to_text() for r in rdatas))


def _now_iso(offset: float = 0.0) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _serial_ge(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: is `a` at least `b`?"""
    return a == b or 0 < ((a - b) % 2**32) < 2**31


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout | TimeoutError):
        return "no answer (timeout)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Rfc2136DnsProvider(DnsProvider):
    """DnsProvider for one zone: reads from and signs updates to the primary `server`."""

    Options = Rfc2136Options

    def __init__(self, options: Rfc2136Options, *, secrets: Secrets | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = fencing.pause):
        self.options = options
        self.zone = dns.name.from_text(options.zone)
        ref = options.tsig.secret
        raw = (secrets or Secrets()).reveal(ref)
        secret = load_tsig_secret(raw, key_name=options.tsig.name, where=ref.describe())
        remember(secret)  # a key file was remembered whole; the bare secret must redact too
        self._key = dns.tsig.Key(options.tsig.name, secret, options.tsig.algorithm)
        self._clock, self._sleep = clock, sleep
        self.primary = Nameserver(address=options.server, port=options.port, name="primary")

    # --- reading ---------------------------------------------------------------------------

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
                                 f"{_describe(exc)}") from None
        except OSError as exc:
            raise ConnectionError(f"{where} unreachable: {_describe(exc)}") from None
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
                raise PermanentError(self._rejected_key(exc)) from None
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
                     int(rdataset.ttl), _values(rdataset))
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

    def _answer(self, server: Nameserver, want: _Want) -> frozenset[dns.rdata.Rdata]:
        response = self._query(server, want.name, want.rdtype)
        for rrset in response.answer:
            if rrset.name == want.name and rrset.rdtype == want.rdtype:
                return frozenset(rrset)
        return frozenset()

    # --- writing ---------------------------------------------------------------------------

    def _parse(self, rec: Record) -> _Want:
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
        return _Want(rec, name, rdtype, frozenset(rdatas))

    def apply(self, *, expected: list[Record], desired: list[Record]) -> Evidence:
        """Swap `expected` for `desired` in one signed, prerequisite-guarded update."""
        for rec in desired:
            if not rec.values:
                raise PermanentError(f"refusing to leave {rec.name} {rec.type} empty: "
                                     "give at least one value")
        wants = [self._parse(r) for r in desired]
        olds = {r.key(): self._parse(r) for r in expected if r.values}
        update = dns.update.UpdateMessage(self.zone, keyring=self._key)
        for want in wants:
            old = olds.get(want.record.key())
            if old is not None:
                update.present(want.name, *old.rdatas)
            else:
                update.absent(want.name, want.rdtype)
            update.replace(want.name, want.record.ttl, *want.rdatas)
        started = self._clock()
        self._send(update, wants, olds)
        written = self._clock()
        serial = self._serial(self.primary)
        asked = self._clock()
        answers = [self._answer(self.primary, w) for w in wants]
        latency = self._clock() - asked
        for want, got in zip(wants, answers, strict=True):
            if got != want.rdatas:  # the primary must serve it at once
                raise PermanentError(
                    f"primary {self.primary.address}:{self.primary.port} accepted the update "
                    f"but serves {want.name} {dns.rdatatype.to_text(want.rdtype)} as "
                    f"{list(_values(got))}, not {list(_values(want.rdatas))} (a CNAME at the "
                    "name, or an update-policy that drops the change?)")
        seen = self._evidence(self.primary, wants, answers, serial, 1, written, latency)
        verified = self._verify(wants, serial, written, primary=seen)
        old_ttl = max((o.record.ttl for o in olds.values()), default=0)
        evidence: Evidence = {
            "provider": "rfc2136", "zone": self.options.zone,
            "primary": f"{self.primary.address}:{self.primary.port}",
            "key": self.options.tsig.name,
            "before": [o.record.to_json() for o in olds.values()
                       if o.record.key() in {w.record.key() for w in wants}],
            "after": [w.record.to_json() for w in wants],
            "serial": serial,
            "servers": verified,
            "writeSeconds": round(written - started, 6),
            "verifySeconds": round(self._clock() - written, 6),
        }
        if old_ttl:
            until = _now_iso(old_ttl)
            evidence["oldTtl"] = old_ttl
            evidence["clientsMayUseOldUntil"] = until
            evidence["note"] = f"clients may still use the old values until {until}"
        return evidence

    def _send(self, update: dns.update.UpdateMessage, wants: list[_Want],
              olds: dict[tuple[str, str], _Want]) -> None:
        where = f"primary {self.options.server}:{self.options.port}"
        key = self.options.tsig.name
        fencing.check()  # right before the write: a step that must stop sends nothing
        try:
            response = dns.query.tcp(update, self.options.server, timeout=self.options.timeout,
                                     port=self.options.port)
        except dns.tsig.PeerError as exc:
            raise PermanentError(self._rejected_key(exc)) from None
        except dns.exception.Timeout:
            raise TimeoutError(f"{where} did not answer the update within "
                               f"{self.options.timeout:g} s; it may or may not be applied: "
                               "read the records before retrying") from None
        except OSError as exc:
            raise ConnectionError(f"{where} unreachable: {_describe(exc)}") from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        if rcode in _CONFLICT_RCODES:
            raise DnsConflict(self._conflict(wants, olds))
        if rcode == dns.rcode.REFUSED:
            raise PermanentError(f"{where} refused the update to zone {self.options.zone} "
                                 f"signed with key {key!r}: allow the key to update the zone "
                                 "(allow-update / update-policy)")
        if rcode == dns.rcode.NOTAUTH:
            raise PermanentError(f"{where} is not authoritative for zone {self.options.zone} "
                                 f"(or did not accept key {key!r}): check `zone` and `server`")
        if rcode == dns.rcode.NOTZONE:
            raise PermanentError(f"{where}: a record lies outside zone {self.options.zone}")
        raise DnsServerError(f"{where} answered {dns.rcode.to_text(rcode)} to the update")

    def _rejected_key(self, exc: dns.tsig.PeerError) -> str:
        key, tsig = self.options.tsig.name, self.options.tsig
        return (f"primary {self.options.server}:{self.options.port} rejected TSIG key "
                f"{key!r} ({tsig.algorithm}): {_tsig_error(exc)}; check that the server has "
                f"key {key!r} with this algorithm and the secret in {tsig.secret.describe()}")

    def _conflict(self, wants: list[_Want], olds: dict[tuple[str, str], _Want]) -> str:
        parts = []
        for want in wants:
            have = _values(self._answer(self.primary, want))
            old = olds.get(want.record.key())
            expect = _values(old.rdatas) if old else ()
            if have != expect:
                parts.append(f"{want.record.name} {want.record.type} is {list(have)}, "
                             f"expected {list(expect)}")
        reason = "; ".join(parts) or "the records changed while the update was in flight"
        return f"{reason}; nothing changed (the update's prerequisites failed)"

    def delete(self, *, expected: list[Record]) -> Evidence:
        """Delete each RRset only if it still holds exactly `expected`'s values (one signed
        update: value-dependent prerequisites + delete RRset), then verify that no server
        serves them. A set already absent at the primary is reported, not sent."""
        olds = [self._parse(r) for r in expected]
        for old in olds:
            if not old.rdatas:
                raise PermanentError(f"record {old.record.name} {old.record.type}: give the "
                                     "values it must still hold to be deleted")
        present, gone = [], []
        for old in olds:
            have = self._answer(self.primary, old)
            if not have:
                gone.append(old)
            elif have != old.rdatas:
                raise DnsConflict(f"{old.record.name} {old.record.type} is "
                                  f"{list(_values(have))}, expected {list(_values(old.rdatas))}"
                                  "; nothing deleted")
            else:
                present.append(old)
        started = self._clock()
        if present:
            update = dns.update.UpdateMessage(self.zone, keyring=self._key)
            for old in present:
                update.present(old.name, *old.rdatas)
            for old in present:
                update.delete(old.name, old.rdtype)
            self._send(update, present, {o.record.key(): o for o in present})
        written = self._clock()
        wants = [_Want(o.record, o.name, o.rdtype, frozenset()) for o in olds]
        serial = self._serial(self.primary)
        asked = self._clock()
        answers = [self._answer(self.primary, w) for w in wants]
        latency = self._clock() - asked
        for want, got in zip(wants, answers, strict=True):
            if got:
                raise DnsConflict(f"{want.record.name} {want.record.type} was written again "
                                  f"as {list(_values(got))} right after the delete (someone "
                                  "else is writing it); it is theirs now, left as it is")
        seen = self._evidence(self.primary, wants, answers, serial, 1, written, latency)
        verified = self._verify(wants, serial, written, primary=seen)
        return {
            "provider": "rfc2136", "zone": self.options.zone,
            "primary": f"{self.primary.address}:{self.primary.port}",
            "key": self.options.tsig.name,
            "deleted": [o.record.to_json() for o in present],
            "alreadyAbsent": [o.record.to_json() for o in gone],
            "serial": serial, "servers": verified,
            "writeSeconds": round(written - started, 6),
            "verifySeconds": round(self._clock() - written, 6),
        }

    # --- verification ----------------------------------------------------------------------

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
                                 f"({_describe(exc)}); list it in `nameservers`") from None

    def _evidence(self, server: Nameserver, wants: list[_Want],
                  answers: list[frozenset[dns.rdata.Rdata]], serial: int, attempts: int,
                  written: float, latency: float) -> Evidence:
        return {
            "name": server.label, "address": server.address, "port": server.port,
            "serial": serial, "attempts": attempts,
            "latencySeconds": round(latency, 6),  # round trips of the check that proved it
            "answer": {f"{w.record.key()[0]} {w.record.type.upper()}": list(_values(a))
                       for a, w in zip(answers, wants, strict=True)},
            "secondsAfterWrite": round(self._clock() - written, 6),
        }

    def _check(self, server: Nameserver, wants: list[_Want],
               serial: int) -> tuple[int | None, list[frozenset[dns.rdata.Rdata]], str]:
        """Ask one server: the answers first, its serial only once they match."""
        answers = [self._answer(server, w) for w in wants]
        if any(a != w.rdatas for a, w in zip(answers, wants, strict=True)):
            shown = "; ".join(f"{w.record.type.upper()} {list(_values(a))}"
                              for a, w in zip(answers, wants, strict=True))
            return None, answers, f"still answers {shown}"
        have = self._serial(server)
        if not _serial_ge(have, serial):
            return None, answers, f"serial {have}, want >= {serial}"
        return have, answers, ""

    def _verify(self, wants: list[_Want], serial: int, written: float, *,
                primary: Evidence | None = None) -> list[Evidence]:
        """Poll every authoritative server until each serves `wants` at >= `serial`."""
        servers = self.nameservers()
        deadline = written + self.options.verify_timeout
        done: dict[str, Evidence] = {}
        pending: dict[str, Nameserver] = {}
        for server in servers:
            if primary is not None and (server.address, server.port) == (
                    self.primary.address, self.primary.port):
                done[server.label] = {**primary, "name": server.label}  # just read there
            else:
                pending[server.label] = server
        attempts = dict.fromkeys(pending, 0)
        last: dict[str, str] = {}
        delay = POLL_FAST
        while pending:
            for label, server in list(pending.items()):
                attempts[label] += 1
                asked = self._clock()
                try:
                    have, answers, why = self._check(server, wants, serial)
                except (dns.exception.DNSException, OSError, DnsServerError) as exc:
                    last[label] = _describe(exc)
                    continue
                if have is None:
                    last[label] = why
                    continue
                done[label] = self._evidence(server, wants, answers, have, attempts[label],
                                             written, self._clock() - asked)
                del pending[label]
            if not pending:
                break
            now = self._clock()
            if now >= deadline:
                lagging = ", ".join(f"{label} ({last.get(label, 'not asked')})"
                                    for label in pending)
                raise DnsVerificationTimeout(
                    f"update applied on the primary (serial {serial}) but not served within "
                    f"{self.options.verify_timeout:g} s by: {lagging}; check that server's "
                    "zone transfers/NOTIFY from the primary")
            self._sleep(min(delay, max(deadline - now, 0.0)))
            if now - written >= POLL_FAST_FOR:  # a slow transfer: back off
                delay = min(delay * 1.5, POLL_SLOW)
        return [done[s.label] for s in servers]

    def verify(self, *, desired: list[Record]) -> Evidence:
        """Prove, without writing, that the primary holds `desired` (a record with no values:
        absent) and every authoritative server serves it at >= the primary's serial."""
        wants = [self._parse(r) for r in desired]
        serial = self._serial(self.primary)
        wrong = []
        for want in wants:
            got = self._answer(self.primary, want)
            if got != want.rdatas:
                wrong.append(f"{want.record.name} {want.record.type} is {list(_values(got))}, "
                             f"expected {list(_values(want.rdatas))}")
        if wrong:
            raise DnsConflict(f"primary {self.primary.address}:{self.primary.port}: "
                              + "; ".join(wrong))
        return {"provider": "rfc2136", "zone": self.options.zone,
                "verified": [w.record.to_json() for w in wants], "serial": serial,
                "servers": self._verify(wants, serial, self._clock())}

    # --- readiness -------------------------------------------------------------------------

    def ready(self) -> str:
        """A signed no-op update (prerequisite only) proves the key; then every server's SOA."""
        update = dns.update.UpdateMessage(self.zone, keyring=self._key)
        update.present(self.zone, dns.rdatatype.SOA)
        self._send(update, [], {})
        servers = self.nameservers()
        serials = {s.label: self._serial(s) for s in servers}
        return (f"key {self.options.tsig.name!r} accepted by the primary for zone "
                f"{self.options.zone}; serials " +
                ", ".join(f"{k}={v}" for k, v in serials.items()))


def _tsig_error(exc: dns.tsig.PeerError) -> str:
    names = {dns.tsig.PeerBadKey: "BADKEY (the server does not know this key name)",
             dns.tsig.PeerBadSignature: "BADSIG (the secret or algorithm differs)",
             dns.tsig.PeerBadTime: "BADTIME (clocks differ by more than the fudge)",
             dns.tsig.PeerBadTruncation: "BADTRUNC"}
    return names.get(type(exc), type(exc).__name__)

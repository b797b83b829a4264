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

The options and the TSIG key are `rfc2136_options`; every read of the zone (records,
serials, the NS set) is `rfc2136_zone`, which this provider extends with writing and
verifying.
"""


from __future__ import annotations

import datetime
import time
from collections.abc import Callable

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.tsig
import dns.update

from controller import fencing
from controller.dns import DnsConflict, DnsNotServed, DnsProvider
from controller.dns.rfc2136_options import ALGORITHMS as ALGORITHMS
from controller.dns.rfc2136_options import Nameserver as Nameserver
from controller.dns.rfc2136_options import Rfc2136Options as Rfc2136Options
from controller.dns.rfc2136_options import TsigOptions as TsigOptions
from controller.dns.rfc2136_options import load_tsig_secret as load_tsig_secret
from controller.dns.rfc2136_options import rejected_key
from controller.dns.rfc2136_zone import DnsServerError as DnsServerError
from controller.dns.rfc2136_zone import Rfc2136Zone, Want, describe, values_of
from controller.model import Evidence, PermanentError, Record
from controller.secrets import Secrets

_CONFLICT_RCODES = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN,
                    dns.rcode.YXDOMAIN}
# verification polls a lagging server every millisecond while a transfer on a healthy
# network would land (one UDP query: nothing to a DNS server), then backs off
POLL_FAST, POLL_FAST_FOR, POLL_SLOW = 0.001, 0.05, 0.1


class DnsVerificationTimeout(DnsNotServed):
    """The write succeeded but not every authoritative server served it within the deadline."""


def _now_iso(offset: float = 0.0) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _serial_ge(a: int, b: int) -> bool:
    """RFC 1982 serial arithmetic: is `a` at least `b`?"""
    return a == b or 0 < ((a - b) % 2**32) < 2**31


class Rfc2136DnsProvider(Rfc2136Zone, DnsProvider):
    """DnsProvider for one zone: reads from and signs updates to the primary `server`."""

    Options = Rfc2136Options

    def __init__(self, options: Rfc2136Options, *, secrets: Secrets | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = fencing.pause):
        super().__init__(options, secrets=secrets)
        self._clock, self._sleep = clock, sleep

    # --- writing ---------------------------------------------------------------------------

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
                    f"{list(values_of(got))}, not {list(values_of(want.rdatas))} (a CNAME at the "
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

    def _send(self, update: dns.update.UpdateMessage, wants: list[Want],
              olds: dict[tuple[str, str], Want]) -> None:
        where = f"primary {self.options.server}:{self.options.port}"
        key = self.options.tsig.name
        fencing.check()  # right before the write: a step that must stop sends nothing
        try:
            response = dns.query.tcp(update, self.options.server, timeout=self.options.timeout,
                                     port=self.options.port)
        except dns.tsig.PeerError as exc:
            raise PermanentError(rejected_key(self.options, exc)) from None
        except dns.exception.Timeout:
            raise TimeoutError(f"{where} did not answer the update within "
                               f"{self.options.timeout:g} s; it may or may not be applied: "
                               "read the records before retrying") from None
        except OSError as exc:
            raise ConnectionError(f"{where} unreachable: {describe(exc)}") from None
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

    def _conflict(self, wants: list[Want], olds: dict[tuple[str, str], Want]) -> str:
        parts = []
        for want in wants:
            have = values_of(self._answer(self.primary, want))
            old = olds.get(want.record.key())
            expect = values_of(old.rdatas) if old else ()
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
                                  f"{list(values_of(have))}, expected {list(values_of(old.rdatas))}"
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
        wants = [Want(o.record, o.name, o.rdtype, frozenset()) for o in olds]
        serial = self._serial(self.primary)
        asked = self._clock()
        answers = [self._answer(self.primary, w) for w in wants]
        latency = self._clock() - asked
        for want, got in zip(wants, answers, strict=True):
            if got:
                raise DnsConflict(f"{want.record.name} {want.record.type} was written again "
                                  f"as {list(values_of(got))} right after the delete (someone "
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

    def _evidence(self, server: Nameserver, wants: list[Want],
                  answers: list[frozenset[dns.rdata.Rdata]], serial: int, attempts: int,
                  written: float, latency: float) -> Evidence:
        return {
            "name": server.label, "address": server.address, "port": server.port,
            "serial": serial, "attempts": attempts,
            "latencySeconds": round(latency, 6),  # round trips of the check that proved it
            "answer": {f"{w.record.key()[0]} {w.record.type.upper()}": list(values_of(a))
                       for a, w in zip(answers, wants, strict=True)},
            "secondsAfterWrite": round(self._clock() - written, 6),
        }

    def _check(self, server: Nameserver, wants: list[Want],
               serial: int) -> tuple[int | None, list[frozenset[dns.rdata.Rdata]], str]:
        """Ask one server: the answers first, its serial only once they match."""
        answers = [self._answer(server, w) for w in wants]
        if any(a != w.rdatas for a, w in zip(answers, wants, strict=True)):
            shown = "; ".join(f"{w.record.type.upper()} {list(values_of(a))}"
                              for a, w in zip(answers, wants, strict=True))
            return None, answers, f"still answers {shown}"
        have = self._serial(server)
        if not _serial_ge(have, serial):
            return None, answers, f"serial {have}, want >= {serial}"
        return have, answers, ""

    def _verify(self, wants: list[Want], serial: int, written: float, *,
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
                    last[label] = describe(exc)
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
                wrong.append(f"{want.record.name} {want.record.type} is {list(values_of(got))}, "
                             f"expected {list(values_of(want.rdatas))}")
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

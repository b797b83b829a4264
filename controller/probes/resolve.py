"""Host-name lookups for the probes, on the event loop: never on a thread pool.

`getaddrinfo` blocks, so asyncio (and aiohttp's default resolver) run it on the loop's
default executor: a handful of threads (6 on 2 cores). A lookup whose nameserver never
answers holds its thread for the system resolver's timeout x attempts (10 s by default)
long after the probe that asked gave up, and a few such probes hold every thread: then
every probe — the healthy core ones too — times out waiting for a thread, which is a false
failover. Here a lookup is a coroutine on the probe's own loop: the probe's timeout cancels
it and frees its socket at once, and a name that never resolves costs nothing but itself.

`ProbeResolver` answers like a host whose nsswitch says `hosts: files dns`:

1. an IP address literal is its own answer;
2. the hosts file (`/etc/hosts`, re-read when it changes); `localhost` and `*.localhost`
   are the loopback addresses even when the file does not list them (RFC 6761);
3. DNS with dnspython's async resolver, configured from `/etc/resolv.conf` (nameservers,
   search list, ndots, timeout; re-read when it changes), A and AAAA asked concurrently,
   IPv4 addresses first; answers are cached for their TTL.

Other NSS sources (mDNS, LDAP, systemd-resolved's synthesised names) are not consulted: a
probe target must be in the hosts file or in DNS. Every failure is an `OSError`
(`socket.gaierror`) whose `strerror` names the host and why ("api.example.com: name does
not exist", "...: no answer from the nameservers within 5 s"), which is what aiohttp and
the probes' `describe_error` expect of a resolver. It is an aiohttp `AbstractResolver`, so
the HTTP and Prometheus probes' shared session uses it; the TCP probe calls it directly.
One process-wide instance (`default_resolver()`) is shared by every loop and thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from aiohttp.abc import AbstractResolver

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

HOSTS_FILE = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_LOOPBACK = ["127.0.0.1", "::1"]


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class _Watched:
    """A file's identity (mtime, size, inode): tells when it must be read again."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = os.stat(self.path)
            now = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            now = (0, 0, 0)
        if now == self._seen:
            return False
        self._seen = now
        return True


class HostsFile:
    """name -> addresses from a hosts(5) file, in file order; re-read when it changes."""

    def __init__(self, path: str = HOSTS_FILE):
        self._file = _Watched(path)
        self._names: dict[str, list[str]] = {}

    def lookup(self, name: str) -> list[str]:
        if self._file.changed():
            self._names = self._read()
        return self._names.get(name.lower().rstrip("."), [])

    def _read(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        try:
            with open(self._file.path, encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except OSError:
            return names
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            address = _literal(fields[0].split("%", 1)[0])
            if address is None:
                continue
            for name in fields[1:]:
                found = names.setdefault(name.lower().rstrip("."), [])
                if address not in found:
                    found.append(address)
        return names


def _gaierror(code: int, host: str, why: str) -> socket.gaierror:
    return socket.gaierror(code, f"{host}: {why}")


class ProbeResolver(AbstractResolver):
    """hosts file, then DNS on dnspython's async resolver (see the module docstring).

    With `nameservers` (and optionally `port`, `search`) it asks those servers instead of
    the ones in `resolv_conf`; `lifetime` bounds one lookup (default: dnspython's 5 s; a
    probe's own timeout usually cancels it sooner).
    """

    def __init__(self, *, nameservers: list[str] | None = None, port: int = 53,
                 search: list[str] | None = None, hosts_file: str = HOSTS_FILE,
                 resolv_conf: str = RESOLV_CONF, lifetime: float | None = None):
        self._hosts = HostsFile(hosts_file)
        self._conf = _Watched(resolv_conf)
        self._explicit = nameservers is not None
        self._nameservers, self._port = list(nameservers or []), port
        self._search = [dns.name.from_text(s) for s in search or []]
        self._lifetime = lifetime
        self._cache = dns.resolver.Cache()
        self._lock = threading.Lock()
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._config_error = ""

    # --- configuration -------------------------------------------------------------------

    def _dns(self, host: str) -> dns.asyncresolver.Resolver:
        with self._lock:
            if self._explicit:
                if self._resolver is None:
                    resolver = dns.asyncresolver.Resolver(configure=False)
                    resolver.nameservers = list(self._nameservers)
                    resolver.port = self._port
                    resolver.search = list(self._search)
                    resolver.domain = dns.name.root
                    self._resolver = self._finish(resolver)
            elif self._conf.changed() or (self._resolver is None and not self._config_error):
                try:
                    resolver = dns.asyncresolver.Resolver(filename=self._conf.path)
                except dns.resolver.NoResolverConfiguration:
                    self._resolver = None
                    self._config_error = (f"no nameserver configured in {self._conf.path}; "
                                          "add one or list the host in the hosts file")
                else:
                    self._resolver, self._config_error = self._finish(resolver), ""
            if self._resolver is None:
                raise _gaierror(socket.EAI_FAIL, host, self._config_error)
            return self._resolver

    def _finish(self, resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
        resolver.cache = self._cache
        if self._lifetime is not None:
            resolver.lifetime = self._lifetime
            resolver.timeout = min(resolver.timeout, self._lifetime)
        return resolver

    # --- lookups -------------------------------------------------------------------------

    async def addresses(self, host: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The host's addresses (IPv4 first); `OSError` naming the host when there are none."""
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        else:
            found = self._hosts.lookup(host)
            name = host.lower().rstrip(".")
            if not found and (name == "localhost" or name.endswith(".localhost")):
                found = list(_LOOPBACK)
            if not found:
                found = await self._ask_dns(host, family)
        wanted = [a for a in found if family == socket.AF_UNSPEC or _family(a) == family]
        if not wanted:
            kind = "IPv6" if family == socket.AF_INET6 else "IPv4"
            raise _gaierror(socket.EAI_NONAME, host, f"no {kind} address")
        return sorted(wanted, key=lambda a: _family(a) == socket.AF_INET6)

    async def _ask_dns(self, host: str, family: int) -> list[str]:
        resolver = self._dns(host)
        types = {int(socket.AF_INET): ["A"], int(socket.AF_INET6): ["AAAA"]}.get(
            int(family), ["A", "AAAA"])
        results = await asyncio.gather(
            *(resolver.resolve(host, rdtype, search=True, raise_on_no_answer=False)
              for rdtype in types),
            return_exceptions=True)
        found: list[str] = []
        errors: list[BaseException] = []
        for result in results:
            if isinstance(result, BaseException):
                errors.append(result)
            else:
                found.extend(rd.to_text() for rd in result)
        if found:
            return found
        raise self._explain(host, errors, resolver)

    def _explain(self, host: str, errors: list[BaseException],
                 resolver: dns.asyncresolver.Resolver) -> OSError:
        for exc in errors:  # the most telling reason first
            if isinstance(exc, dns.resolver.NXDOMAIN):
                return _gaierror(socket.EAI_NONAME, host, "name does not exist")
        for exc in errors:
            if isinstance(exc, dns.exception.Timeout):
                return _gaierror(socket.EAI_AGAIN, host, "no answer from the nameservers "
                                                         f"within {resolver.lifetime:g} s")
        for exc in errors:
            if isinstance(exc, dns.resolver.NoNameservers):
                return _gaierror(socket.EAI_FAIL, host,
                                 "every nameserver failed (SERVFAIL or REFUSED)")
        for exc in errors:
            if not isinstance(exc, dns.exception.DNSException | OSError):
                raise exc  # a bug or a cancellation, not an answer: never disguise it
        if errors:
            exc = errors[0]
            return _gaierror(socket.EAI_FAIL, host, str(exc) or type(exc).__name__)
        return _gaierror(socket.EAI_NONAME, host, "no address records")

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily | int = socket.AF_INET,
                      ) -> list[ResolveResult]:
        return [{"hostname": host, "host": address, "port": port, "family": _family(address),
                 "proto": 0, "flags": _FLAGS}
                for address in await self.addresses(host, family)]

    async def close(self) -> None:
        """Nothing to release: each query opens and closes its own socket."""


_default: ProbeResolver | None = None
_default_lock = threading.Lock()


def default_resolver() -> ProbeResolver:
    """The process-wide resolver (system configuration), shared by every loop."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ProbeResolver()
        return _default


__all__: list[Any] = ["HostsFile", "ProbeResolver", "default_resolver"]

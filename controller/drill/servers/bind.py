"""BIND 9 launcher: one authoritative primary plus secondaries fed by NOTIFY and zone transfer.

Owns a small, real authoritative DNS deployment for the DNS contract tests, the benchmark
and drills: a TSIG key made by `tsig-keygen`, one zone whose primary accepts RFC 2136
updates signed with that key, and secondaries that transfer the zone (TSIG-signed) and are
told of every change by `also-notify`. Each server is a separate `named -g -c` process in
its own fresh directory, stopped by its own PID.

Every server listens on 127.0.0.1 on its own port, picked free at run time (named listens
only on addresses configured on an interface, and this host's loopback carries 127.0.0.1
only; adding addresses would change a host shared with other tests). The zone's NS set
names every server (ns1 = primary, ns2... = secondaries), all with glue 127.0.0.1.

`notify-delay 0` and a very high `notify-rate`: BIND's notify rate limiter sends the first
NOTIFY at once and holds the others for one tick (10 ms at notify-rate 1000, 0.5 s at the
default 20), which would make every secondary after the first look slow for no reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, wait_ready

NAMED = Path("/usr/sbin/named")
TSIG_KEYGEN = Path("/usr/sbin/tsig-keygen")
APT_HINT = "apt-get install -y --no-install-recommends bind9 bind9-dnsutils"


def _binary(path: Path) -> str:
    found = str(path) if path.exists() else shutil.which(path.name)
    if not found:
        raise ServerError(f"{path} not found: {APT_HINT}")
    return found


PORT_ATTEMPTS = 3


def free_dns_port(taken: set[int], *, attempts: int = 50) -> int:
    """A port on 127.0.0.1 free for both TCP and UDP (DNS needs both), not in `taken`."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise ServerError(f"no port free for both TCP and UDP on 127.0.0.1 after {attempts} tries")


@dataclass
class NamedProcess:
    """One `named` instance: its role, address, directory and process."""

    name: str  # ns1, ns2, ... (also its NS name in the zone)
    address: str
    port: int
    directory: Path
    primary: bool
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log(self) -> Path:
        return self.directory / "named.log"


@dataclass
class BindServers(Launcher):
    """A primary and `secondaries` secondaries serving `zone`, signed updates with `key_name`.

    Use as a context manager, or call `start()`/`stop()`. `records` are extra zone-file
    lines (relative to the zone) present from the start.
    """

    zone: str = "example.test."
    secondaries: int = 2
    key_name: str = "failover-key"
    algorithm: str = "hmac-sha256"
    records: list[str] = field(default_factory=list)
    base: Path | None = None
    servers: list[NamedProcess] = field(default_factory=list)
    _own_base: bool = False

    # --- what callers use ----------------------------------------------------------------

    @property
    def primary(self) -> NamedProcess:
        return self.servers[0]

    @property
    def key_file(self) -> Path:
        """The key in BIND's `key "name" { algorithm ...; secret "..."; };` format."""
        assert self.base is not None
        return self.base / "tsig.key"

    @property
    def secret(self) -> str:
        text = self.key_file.read_text()
        return text.split('secret "', 1)[1].split('"', 1)[0]

    def server(self, name: str) -> NamedProcess:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(f"no server {name!r}; have {[s.name for s in self.servers]}")

    def pause(self, name: str) -> None:
        """SIGSTOP one server: it stops answering (and stops taking NOTIFYs) until resumed."""
        s = self.server(name)
        if s.proc is not None and s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGSTOP)
            s.paused = True

    def resume(self, name: str) -> None:
        s = self.server(name)
        if s.proc is not None and s.paused:
            os.kill(s.proc.pid, signal.SIGCONT)
            s.paused = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, timeout: float = 20.0) -> BindServers:
        named = _binary(NAMED)
        keygen = _binary(TSIG_KEYGEN)
        if not self.zone.endswith("."):
            self.zone += "."
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="bind-"))
            self._own_base = True
        self.base.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([keygen, "-a", self.algorithm, self.key_name],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise ServerError(f"tsig-keygen failed: {made.stderr.strip()} ({APT_HINT})")
        self.key_file.write_text(made.stdout)
        self.key_file.chmod(0o600)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._launch(named, timeout)
                return self
            except ServerError as exc:
                self._halt()
                # a port found free was taken before named bound it (another process's
                # ephemeral port): pick new ports and start every server again
                if attempt < PORT_ATTEMPTS and "unable to listen" in str(exc):
                    continue
                self.stop()
                raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self, named: str, timeout: float) -> None:
        assert self.base is not None
        ports: list[int] = []
        for _ in range(1 + self.secondaries):
            ports.append(free_dns_port(set(ports)))
        self.servers = [
            NamedProcess(f"ns{i + 1}", "127.0.0.1", port, self.base / f"ns{i + 1}",
                          primary=i == 0)
            for i, port in enumerate(ports)
        ]
        # the primary serves its zone before a secondary starts: a secondary's first
        # transfer from a primary still loading ends early ("end of file") and on a
        # loaded host its next try may come after the wait is over
        primary, secondaries = self.servers[0], self.servers[1:]
        self._spawn(named, primary)
        self._wait_ready(primary, timeout)
        for s in secondaries:
            self._spawn(named, s)
        for s in secondaries:
            self._wait_ready(s, timeout)

    def _spawn(self, named: str, s: NamedProcess) -> None:
        self._configure(s)
        s.proc = subprocess.Popen(
            [named, "-g", "-n", "1", "-c", str(s.directory / "named.conf")],
            cwd=s.directory, stdout=subprocess.DEVNULL, stderr=s.log.open("wb"))

    def _halt(self) -> None:
        """Stop every server by its PID (their directories stay)."""
        for s in reversed(self.servers):
            proc, s.proc = s.proc, None
            if proc is None or proc.poll() is not None:
                continue
            if s.paused:
                os.kill(proc.pid, signal.SIGCONT)
                s.paused = False
            terminate(proc)

    def stop(self) -> None:
        self._halt()
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    # --- configuration --------------------------------------------------------------------

    def _zone_text(self) -> str:
        names = [s.name for s in self.servers]
        lines = [
            "$TTL 300",
            f"@ IN SOA {names[0]}.{self.zone} hostmaster.{self.zone} 1 3600 600 86400 60",
            *(f"@ IN NS {n}.{self.zone}" for n in names),
            *(f"{s.name} IN A {s.address}" for s in self.servers),
            *self.records,
            "",
        ]
        return "\n".join(lines)

    def _configure(self, s: NamedProcess) -> None:
        assert self.base is not None
        s.directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.key_file, s.directory / "tsig.key")
        zone_file = s.directory / "zone.db"
        if s.primary:
            zone_file.write_text(self._zone_text())
            others = "".join(f"{o.address} port {o.port}; " for o in self.servers[1:])
            zone = (f'  type primary; file "{zone_file}";\n'
                    f'  allow-update {{ key "{self.key_name}"; }};\n'
                    f'  allow-transfer {{ key "{self.key_name}"; }};\n'
                    f"  notify explicit; also-notify {{ {others}}};\n")
        else:
            zone = (f'  type secondary; file "{zone_file}";\n'
                    f"  primaries port {self.primary.port} {{ {self.primary.address} "
                    f'key "{self.key_name}"; }};\n'
                    f'  allow-transfer {{ key "{self.key_name}"; }};\n'
                    "  notify no;\n"
                    # a NOTIFY lost on a loaded host would otherwise leave the secondary
                    # behind for the SOA's hour: it also asks the primary every 2 s
                    "  min-refresh-time 2; max-refresh-time 2;\n"
                    "  min-retry-time 1; max-retry-time 1;\n")
        (s.directory / "named.conf").write_text(
            f'include "{s.directory / "tsig.key"}";\n'
            "controls { };\n"
            "options {\n"
            f'  directory "{s.directory}";\n'
            f'  pid-file "{s.directory / "named.pid"}";\n'
            f'  session-keyfile "{s.directory / "session.key"}";\n'
            f"  listen-on port {s.port} {{ {s.address}; }};\n"
            "  listen-on-v6 { none; };\n"
            "  recursion no; dnssec-validation no;\n"
            "  notify-delay 0; notify-rate 100000; startup-notify-rate 1000;\n"
            "  serial-query-rate 1000;\n"
            "};\n"
            f'zone "{self.zone}" {{\n{zone}}};\n'
        )

    def _wait_ready(self, s: NamedProcess, timeout: float) -> None:
        """Ready = the server answers the zone's SOA authoritatively."""
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)

        def serving() -> bool:
            answer = dns.query.udp(query, s.address, timeout=0.2, port=s.port)
            return bool(answer.rcode() == dns.rcode.NOERROR and answer.answer)

        assert s.proc is not None
        wait_ready(f"named {s.name} serving {self.zone} on {s.address}:{s.port}", serving,
                   timeout=timeout, watch=[(f"named {s.name}", s.proc, s.log)],
                   not_yet=(OSError, dns.exception.DNSException))

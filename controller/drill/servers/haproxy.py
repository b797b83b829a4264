"""HAProxy launcher: a real `haproxy` in front of two real HTTP servers, one per site.

Owns a small, real edge for the traffic contract tests, the benchmark and drills: two
HTTP servers ("primary" and "backup", each the sandbox's site app, `python -m
controller.drill.app SITE SITE`, answering every request with an `X-Served-By: SITE`
header) and one `haproxy -db -f DIR/haproxy.cfg` whose backend holds them as servers
`web1` (primary, weight 100) and `web2` (backup, weight 0: ready, given no traffic), its admin
socket (`level admin`) at `DIR/admin.sock` and one without admin rights (`level
operator`) at `DIR/operator.sock`. Everything listens on 127.0.0.1 on ports picked free
at run time, lives in a fresh temp directory, and is stopped by its own PID.

The site app (controller/drill/app.py) speaks HTTP/1.1 keep-alive with one buffered write
per response; its `/health` answers 200 unless told otherwise through `POST
/_control?health=STATUS&after=N` (N more healthy answers, then STATUS), so a test can make
the backup's health check fail at a chosen moment without timing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready

HAPROXY = Path("/usr/sbin/haproxy")
APT_HINT = "apt-get install -y --no-install-recommends haproxy"
HEADER = "X-Served-By"
SITES = ("primary", "backup")


# --- the launcher --------------------------------------------------------------------------


@dataclass
class SiteServer:
    """One site's HTTP server process and the HAProxy server name that points at it."""

    site: str
    server: str  # name in the HAProxy backend (web1, web2)
    port: int = 0
    proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class HaproxyServers(Launcher):
    """`with HaproxyServers() as edge:` haproxy at `edge.url()`, admin at `edge.socket`.

    `options()` gives the `haproxy` traffic backend's plan options for this edge;
    `command()` talks to the runtime API out of band; `reset()` puts the initial
    weights back (primary 100, backup 0) so a session-wide edge can be shared by tests.
    """

    backend: str = "be_app"
    base: Path | None = None
    sites: dict[str, SiteServer] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _own_base: bool = False

    # --- what callers use ----------------------------------------------------------------

    @property
    def socket(self) -> Path:
        assert self.base is not None
        return self.base / "admin.sock"

    @property
    def operator_socket(self) -> Path:
        """A second runtime API socket at `level operator`: reads, but no `set server`."""
        assert self.base is not None
        return self.base / "operator.sock"

    @property
    def config(self) -> Path:
        assert self.base is not None
        return self.base / "haproxy.cfg"

    @property
    def log(self) -> Path:
        assert self.base is not None
        return self.base / "haproxy.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def servers(self) -> dict[str, list[str]]:
        return {site: [s.server] for site, s in self.sites.items()}

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"socket": str(self.socket), "backend": self.backend,
                "servers": self.servers, **extra}

    def command(self, line: str) -> str:
        """One runtime API command over the admin socket; its raw reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def reset(self) -> None:
        """Back to the initial state: primary ready with weight 100, backup weight 0, both
        up (a test may have forced one down with `set server BE/S health down`)."""
        for site, weight in (("primary", 100), ("backup", 0)):
            name = f"{self.backend}/{self.sites[site].server}"
            for line in (f"set server {name} weight {weight}", f"set server {name} state ready",
                         f"set server {name} health up"):
                reply = self.command(line)
                if reply.strip():
                    raise ServerError(f"haproxy refused {line!r}: {reply.strip()}")
        for site in SITES:
            self.set_health(site, 200)

    def set_health(self, site: str, status: int, *, after: int | None = None) -> None:
        """`site`'s /health answers 200 for `after` more requests, then `status`."""
        query = f"health={status}" + (f"&after={after}" if after is not None else "")
        request = urllib.request.Request(f"{self.sites[site].url}/_control?{query}",
                                         method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, *, timeout: float = 20.0) -> HaproxyServers:
        binary = str(HAPROXY) if HAPROXY.exists() else shutil.which("haproxy")
        if not binary:
            raise ServerError(f"{HAPROXY} not found: {APT_HINT}")
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="haproxy-"))
            self._own_base = True
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            for i, site in enumerate(SITES):
                self.sites[site] = self._start_site(site, f"web{i + 1}", timeout)
            self.port = free_port()
            self.config.write_text(self._config())
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                             cwd=self.base, stdout=subprocess.DEVNULL,
                                             stderr=log)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        procs: list[subprocess.Popen[Any]] = []
        if self.proc is not None:
            procs.append(self.proc)
            self.proc = None
        for s in self.sites.values():
            if s.proc is not None:
                procs.append(s.proc)
                s.proc = None
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            terminate(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    # --- internals ------------------------------------------------------------------------

    def _start_site(self, site: str, server: str, timeout: float) -> SiteServer:
        s = SiteServer(site, server)
        s.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.drill.app", site, site],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            cwd=Path(__file__).resolve().parents[3])
        assert s.proc.stdout is not None
        line = s.proc.stdout.readline().strip()  # the port, once bound
        if not line.isdigit():
            s.proc.kill()
            s.proc.wait(10)
            raise ServerError(f"HTTP server for {site} did not start (exit {s.proc.returncode})")
        s.port = int(line)
        return s

    def _config(self) -> str:
        primary, backup = self.sites["primary"], self.sites["backup"]
        return (
            "global\n"
            f"  stats socket {self.socket} mode 600 level admin\n"
            f"  stats socket {self.operator_socket} mode 600 level operator\n"
            "  stats timeout 30s\n"
            "defaults\n"
            "  mode http\n"
            "  option http-keep-alive\n"
            "  timeout connect 2s\n"
            "  timeout client 30s\n"
            "  timeout server 30s\n"
            "  timeout http-keep-alive 30s\n"
            "frontend fe_app\n"
            f"  bind 127.0.0.1:{self.port}\n"
            f"  default_backend {self.backend}\n"
            f"backend {self.backend}\n"
            "  balance roundrobin\n"
            f"  server {primary.server} 127.0.0.1:{primary.port} weight 100\n"
            f"  server {backup.server} 127.0.0.1:{backup.port} weight 0\n"
        )

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the admin socket lists the backend and the frontend answers."""
        def serving() -> bool:
            if self.backend not in self.command(f"show servers state {self.backend}"):
                return False
            with urllib.request.urlopen(self.url("/"), timeout=1) as response:
                return bool(response.headers.get(HEADER) == "primary")

        assert self.proc is not None
        wait_ready(f"haproxy on 127.0.0.1:{self.port} (admin socket {self.socket})", serving,
                   timeout=timeout, watch=[("haproxy", self.proc, self.log)])

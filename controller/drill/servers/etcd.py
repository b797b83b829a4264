"""etcd launcher: one Debian `etcd` (package etcd-server) member on free loopback ports.

Owns the one place a real etcd is started: for the kube-apiserver (`kube.py`) and for
the `etcd` coordination backend's contract tests. Why each choice:

- **A fresh data directory, free client and peer ports**, so any number run side by side
  and nothing survives a test; the process runs in the foreground and is stopped by its
  own PID (`terminate`), never by name.
- **`fast=True`** sets a 10 ms heartbeat and a 100 ms election timeout: etcd's shortest
  lease is 1.5 election timeouts rounded up to a second, so a coordination test can let a
  1 s lease expire instead of waiting out the default minimum of 2 s. A single member never
  holds an election after start, so the short timings cost nothing.
- **`tls=True`** serves https with a certificate signed by a throw-away CA (`certs.py`), so
  a client verifies a real chain against `ca_file`.
- **`enable_auth(password)`** adds `root` (role root) and turns authentication on through the
  v3 JSON gateway, as an administrator would with `etcdctl auth enable`.

Setup talks plain HTTP(S) (urllib) to the JSON gateway that etcd 3.4 serves under `/v3/`,
so the launcher does not depend on the client under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready
from controller.drill.servers.certs import write_ca_and_cert

ETCD = Path("/usr/bin/etcd")
ETCD_HINT = "apt-get install -y --no-install-recommends etcd-server"


def etcd_binary() -> str:
    found = str(ETCD) if ETCD.exists() else shutil.which("etcd")
    if not found:
        raise ServerError(f"{ETCD} not found: {ETCD_HINT}")
    return found


@dataclass
class EtcdServer(Launcher):
    """`with EtcdServer() as etcd: etcd.url ...` — one member; `base` holds its data
    directory (`etcd/`) and log (`etcd.log`); a base it made itself is removed on stop."""

    base: Path | None = None
    fast: bool = False
    tls: bool = False
    url: str = ""
    ca_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _own_base: bool = False
    _token: str | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log(self) -> Path:
        assert self.base is not None
        return self.base / "etcd.log"

    def start(self, *, timeout: float = 30.0) -> EtcdServer:
        binary = etcd_binary()
        if self.base is None:
            self.base = Path(tempfile.mkdtemp(prefix="etcd-"))
            self._own_base = True
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        try:
            scheme, tls_args = "http", []
            if self.tls:
                self.ca_file, cert, key = write_ca_and_cert(base, name="etcd")
                scheme, tls_args = "https", ["--cert-file", str(cert), "--key-file", str(key)]
            client, peer_port = free_port(), free_port()
            self.url = f"{scheme}://127.0.0.1:{client}"
            peer = f"http://127.0.0.1:{peer_port}"
            timing = ["--heartbeat-interval", "10", "--election-timeout", "100"] \
                if self.fast else []
            argv = [binary, "--name", "default", "--data-dir", str(base / "etcd"),
                    "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                    "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"default={peer}", *timing, *tls_args,
                    "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
            with self.log.open("wb") as log:
                self.process = subprocess.Popen(argv, cwd=base, stdout=log,
                                                stderr=subprocess.STDOUT)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # a test may have SIGSTOPped it
                os.kill(self.process.pid, signal.SIGCONT)
            terminate(self.process, timeout=15)
        if self._own_base and self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)

    # --- readiness and administration ----------------------------------------------------

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=1,
                                    context=self._context()) as reply:
            return bool(json.loads(reply.read()).get("health") == "true")

    def wait_ready(self, timeout: float) -> None:
        """Until /health says true; raises ServerError with the log if etcd exits or
        does not answer in time."""
        watch = [("etcd", self.process, self.log)] if self.process is not None else []
        wait_ready(f"etcd at {self.url}", self.healthy, timeout=timeout, watch=watch)

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JSON gateway call (`/v3/...`), as root once auth is enabled."""
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._context()) as reply:
                return dict(json.loads(reply.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            raise ServerError(f"etcd {path} answered {exc.code}: "
                              f"{exc.read().decode(errors='replace')[:300]}") from None

    def enable_auth(self, password: str) -> None:
        """Add user root (role root) with `password` and turn authentication on."""
        self.call("/v3/auth/user/add", {"name": "root", "password": password})
        self.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.call("/v3/auth/enable", {})
        self._token = str(self.call("/v3/auth/authenticate",
                                    {"name": "root", "password": password})["token"])

    def _context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

"""Prometheus launcher: a real `prometheus` scraping a small exporter the caller controls.

Owns a live Prometheus for the business-signal probe (complaint volume, ticket counts):
an exporter (a threaded HTTP server in this process) serves `/metrics` in the text
format with values the test sets, and `prometheus` (Debian's package) scrapes it every
`scrape` seconds into a fresh TSDB in a temp dir, listening on a free loopback port.
`wait_for(query, value)` polls the HTTP API until a scrape shows the value, so a test
never sleeps for a fixed time. Stopped by its own PID; the exporter by its handle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready

PROMETHEUS = Path("/usr/bin/prometheus")
APT_HINT = "apt-get install -y --no-install-recommends prometheus"


class _Exporter(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ExporterHandler)
        self.lock = threading.Lock()
        self.series: dict[str, float] = {}


class _ExporterHandler(BaseHTTPRequestHandler):
    server: _Exporter

    def do_GET(self) -> None:
        with self.server.lock:
            body = "".join(f"{name} {value}\n" for name, value in self.server.series.items())
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class PrometheusServer(Launcher):
    """`with PrometheusServer() as prom: prom.set({"tickets{q=\\"a\\"}": 100})`."""

    def __init__(self, *, scrape: float = 0.2):
        self.scrape = scrape
        self.base = Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.exporter = _Exporter()
        self._serving = threading.Thread(target=self.exporter.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, series: dict[str, float]) -> None:
        """Replace what the exporter serves (metric name with labels -> value)."""
        with self.exporter.lock:
            self.exporter.series = dict(series)

    def start(self, *, timeout: float = 60.0) -> PrometheusServer:
        if not PROMETHEUS.exists():
            raise ServerError(f"{PROMETHEUS} not found: {APT_HINT}")
        self._serving.start()
        target = f"127.0.0.1:{self.exporter.server_address[1]}"
        interval = f"{int(self.scrape * 1000)}ms"
        (self.base / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            "scrape_configs:\n  - job_name: exporter\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.port = free_port()
        log = (self.base / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={self.base / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.base / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
        log.close()
        try:
            wait_ready(f"prometheus on {self.url}", self._ready, timeout=timeout,
                       watch=[("prometheus", self.proc, self.base / "prometheus.log")])
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
            return bool(reply.status == 200)

    def query(self, promql: str) -> Any:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())["data"]["result"]

    def wait_for(self, promql: str, value: float, *, timeout: float = 30.0) -> None:
        """Until `promql` answers `value` (a scrape has happened since `set`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result and float(result[0]["value"][1]) == value:
                return
            time.sleep(self.scrape / 2)
        raise ServerError(f"prometheus never answered {promql} = {value:g}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)
        self.exporter.shutdown()
        self.exporter.server_close()
        shutil.rmtree(self.base, ignore_errors=True)


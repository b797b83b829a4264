"""The controller's own HTTP endpoints: /healthz, /readyz and /metrics.

/healthz says the reconcile loop is alive (it ticked recently); /readyz says it can act
(its journal answers); /metrics is Prometheus text, with the time of the last beat so an
alert sees a loop that stopped (`ControllerNotReconciling`). A plain threaded http.server
is enough for three read-only endpoints and keeps the loop's thread free.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import metrics


class Health:
    """Shared between the loop (which beats) and the HTTP handlers (which read)."""

    def __init__(self, *, stale_after: float, ready_check: Callable[[], object]):
        self.stale_after, self.ready_check = stale_after, ready_check
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        self.last_beat = time.monotonic()
        metrics.RECONCILED.set(time.time())  # what alerts read: 0 until the first cycle

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_beat
        return age <= self.stale_after, f"last reconcile {age:.1f} s ago"

    def ready(self) -> tuple[bool, str]:
        try:
            self.ready_check()
        except Exception as exc:
            return False, f"not ready: {type(exc).__name__}"
        return True, "ready"


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body, status, ctype = generate_latest(), 200, CONTENT_TYPE_LATEST
            elif self.path in ("/healthz", "/readyz"):
                ok, text = health.alive() if self.path == "/healthz" else health.ready()
                body, status, ctype = text.encode() + b"\n", 200 if ok else 503, "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes of these endpoints are not worth a log line each

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server

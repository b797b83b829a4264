"""The controller's own HTTP endpoints: /healthz, /readyz and /metrics.

/healthz says the reconcile loop is alive (it ticked recently); /readyz says it can act
(its journal answers), and else why: the failing check's error, type and message, with
every secret value scrubbed (`secrets.redact`) and a URL's user and password masked;
/metrics is Prometheus text, with the time of the last beat so an alert sees a loop that
stopped (`ControllerNotReconciling`). A plain threaded http.server is enough for three
read-only endpoints and keeps the loop's thread free.

With `Tls` (a certificate and its key, `--tls-cert`/`--tls-key`) the endpoints are served
over HTTPS only, TLS 1.2 or newer: metrics and health need no secrecy, but a scraper that
verifies the certificate knows it reads this controller and not an impostor on the
network. A missing file, or a key that is not the certificate's, is refused at start with
the file and the option named, never served half-configured.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import metrics
from controller.secrets import MASK, redact

log = logging.getLogger(__name__)


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
        except NotReady as exc:
            return False, f"not ready: {exc}"
        except Exception as exc:
            return False, f"not ready: {type(exc).__name__}: {_scrubbed(str(exc))}"
        return True, "ready"


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # https://user:password@host


def _scrubbed(text: str) -> str:
    """An error's text safe to show: secret values and a URL's credentials masked."""
    return _USERINFO.sub(f"{MASK}@", redact(text))


class NotReady(RuntimeError):
    """Why this process is not ready, in words of our own for /readyz (other exceptions
    are shown by type and scrubbed message: their text may carry a credential)."""


class TlsError(ValueError):
    """The endpoints' certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True)
class Tls:
    """The certificate (PEM, with its chain) and private key the endpoints are served with."""

    cert: Path
    key: Path

    @classmethod
    def of(cls, cert: str | None, key: str | None) -> Tls | None:
        """From the `--tls-cert`/`--tls-key` options: both, or neither (plain HTTP)."""
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise TlsError("give both --tls-cert and --tls-key (the certificate and its "
                           "private key), or neither to serve plain HTTP")
        return cls(Path(cert), Path(key))

    def context(self) -> ssl.SSLContext:
        for path, option in ((self.cert, "--tls-cert"), (self.key, "--tls-key")):
            if not path.is_file():
                raise TlsError(f"{option} {path}: no such file; give the PEM file (a "
                               "mounted Secret of type kubernetes.io/tls holds tls.crt and "
                               "tls.key)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as exc:
            why = ("the private key does not match the certificate"
                   if "KEY_VALUES_MISMATCH" in str(exc) else
                   f"not a PEM certificate and private key ({exc.reason or exc})")
            raise TlsError(f"--tls-cert {self.cert} / --tls-key {self.key}: {why}") from None
        except OSError as exc:
            raise TlsError(f"--tls-cert {self.cert} / --tls-key {self.key}: cannot read: "
                           f"{exc.strerror or exc}") from None
        return ctx


def listening(listen: str | None, cert: str | None, key: str | None
              ) -> tuple[str, int, Tls | None] | None:
    """Where (`--listen HOST:PORT`) and how (`--tls-cert`, `--tls-key`) to serve; None: not
    at all. TlsError, before anything starts, when TLS is asked for without an address,
    with one file only, or with files that cannot serve (missing, key not the cert's)."""
    tls = Tls.of(cert, key)
    if tls is not None:
        tls.context()
    if listen is None:
        if tls is not None:
            raise TlsError("--tls-cert/--tls-key secure the endpoints of --listen: give "
                           "--listen HOST:PORT too")
        return None
    host, _, port = listen.rpartition(":")
    return host or "0.0.0.0", int(port), tls


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that speaks plain HTTP to HTTPS, or hangs up: not the server's fault."""
        log.debug("request from %s failed", client_address, exc_info=True)


def serve(health: Health, host: str, port: int, *, tls: Tls | None = None
          ) -> ThreadingHTTPServer:
    """Serve the endpoints on `host:port` (HTTPS with `tls`) on a thread of their own."""
    context = tls.context() if tls else None  # refused here, before anything listens

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that stalls (in the TLS handshake too) lets go of its thread

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

    server = _Server((host, port), Handler)
    if context is not None:  # the handshake runs on the request's thread, not accept's
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    return server

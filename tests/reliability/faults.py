"""Small fault injectors placed in front of the real servers: each listens on a free
loopback port in this process and is stopped by `stop()`.

- `TcpProxy`: forwards bytes to a real server (TLS passes through untouched); `cut()`
  closes every connection and stops listening (clients see the server gone: refused);
  `hang()` closes every connection and then accepts new ones without a word (packets
  dropped by a partition: every request waits for its timeout); `resume()` forwards
  again on the same port.
- `Silent`: accepts TCP connections and never says a word (a hung SSH or DNS server).
- `S3Throttle`: an HTTP proxy in front of moto that answers the first `fail` requests
  with `status` (503 SlowDown by default, or 500 InternalError) and passes the rest.
- `KubeFaults`: a plain-HTTP proxy in front of the real kube-apiserver (TLS to it, with
  the client's own bearer token passed through) that answers chosen requests — matched
  by method, path and JSON body — with an API Status error (503 by default) instead of
  forwarding them; everything else, watches included (streamed as they come), passes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def _listen(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


class TcpProxy:
    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._listener: socket.socket | None = _listen()
        self.port = int(self._listener.getsockname()[1])
        self._conns: set[socket.socket] = set()
        self._held: list[socket.socket] = []  # accepted while hanging, never answered
        self._hanging = False
        self._lock = threading.Lock()
        self.connections = 0
        self._serve(self._listener)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True,
                         name=f"proxy-{self.port}").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut or stopped
            with self._lock:
                if self._hanging:
                    self._held.append(client)
                    continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
                self.connections += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))

    def _drop(self, *, held_only: bool = False) -> None:
        with self._lock:
            conns = [*([] if held_only else self._conns), *self._held]
            self._held = []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        """The network between the client and the server is gone: nothing gets through."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._drop()

    def hang(self) -> None:
        """Packets are dropped: connections are accepted and never answered."""
        with self._lock:
            self._hanging = True
        self._drop()

    def resume(self) -> None:
        with self._lock:
            self._hanging = False
        self._drop(held_only=True)  # those held while hanging are never answered: close
        if self._listener is None:
            self._listener = _listen(self.port)
            self._serve(self._listener)

    def stop(self) -> None:
        self.cut()


class Silent:
    """A TCP listener that accepts and never answers (nor closes)."""

    def __init__(self) -> None:
        self._listener = _listen()
        self.port = int(self._listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self.accepted:
            conn.close()


_S3_ERRORS = {503: ("SlowDown", "Please reduce your request rate."),
              500: ("InternalError", "We encountered an internal error. Please try again.")}


class S3Throttle:
    """`endpoint` for the S3 client; the first `fail` requests get `status`, then moto."""

    def __init__(self, upstream: str, *, fail: int, status: int = 503):
        self.fail, self.status = fail, status
        self.failed = 0
        self.passed = 0
        target = urlsplit(upstream)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if owner.failed < owner.fail:
                    owner.failed += 1
                    code, message = _S3_ERRORS[owner.status]
                    reply = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}"
                             f"</Code><Message>{message}</Message></Error>").encode()
                    self.send_response(owner.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                owner.passed += 1
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1",
                                                  target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                got = conn.getresponse()
                data = got.read()
                self.send_response(got.status)
                for k, v in got.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length",
                                         "keep-alive", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Fault:
    """Answer `times` requests for which `when(method, path, body)` is true with `status`
    (`body` is the request's parsed JSON, or None); `hits` counts those answered."""

    when: Callable[[str, str, Any], bool]
    status: int = 503
    times: int = 1
    hits: int = 0


_REASONS = {503: "ServiceUnavailable", 500: "InternalError", 504: "Timeout",
            429: "TooManyRequests"}


class KubeFaults:
    """`url` (plain HTTP on loopback) for a client of the kube-apiserver at `upstream`."""

    def __init__(self, upstream: str, *, ca_file: str):
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        target = urlsplit(upstream)
        context = ssl.create_default_context(cafile=ca_file)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                fault = owner._match(self.command, self.path, body)
                if fault is not None:
                    reply = json.dumps({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "code": fault.status,
                        "reason": _REASONS.get(fault.status, "InternalError"),
                        "message": f"injected by the test's fault proxy: {self.command} "
                                   f"{self.path.split('?')[0]}"}).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                conn = http.client.HTTPSConnection(target.hostname or "127.0.0.1",
                                                   target.port, context=context, timeout=330)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive", "host")}
                    conn.request(self.command, self.path, body=raw or None, headers=headers)
                    got = conn.getresponse()
                    self.send_response(got.status)
                    for k, v in got.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding",
                                             "content-length", "keep-alive"):
                            self.send_header(k, v)
                    if got.getheader("Content-Length") is not None:
                        data = got.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    # streamed (a watch): relay each piece as it comes, chunked
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while piece := got.read1(65536):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True, name="kube-faults").start()

    def fail(self, when: Callable[[str, str, Any], bool], *, status: int = 503,
             times: int = 1) -> Fault:
        fault = Fault(when, status, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _match(self, method: str, path: str, body: Any) -> Fault | None:
        with self._lock:
            self.seen.append((method, path))
            for fault in self.faults:
                if fault.hits < fault.times and fault.when(method, path, body):
                    fault.hits += 1
                    return fault
        return None

    def kubeconfig(self, path: Any, token_file: str) -> Any:
        """A kubeconfig (mode 0600) at `path` that reaches the API server through here."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "faults",
            "clusters": [{"name": "faults", "cluster": {"server": self.url}}],
            "users": [{"name": "faults", "user": {"tokenFile": token_file}}],
            "contexts": [{"name": "faults", "context": {"cluster": "faults",
                                                       "user": "faults"}}]}))
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""Webhook receiver: a real local HTTP server that records every POST it is sent.

Owns one `http.server.ThreadingHTTPServer` on a free loopback port, served from a daemon
thread of this process and stopped through its handle (`stop()`: shutdown, close the
socket, join the thread); there is no child process, so no PID. It stands in for Slack,
a generic webhook and an SMS gateway in the contract tests and the sandbox drill: every
request is kept (path, headers, body, the status it was answered with), and
`respond(path, [500, 200])` scripts the next answers on a path to show retries; once the
script is used up, requests are answered 200 `ok` like Slack does.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controller.drill.servers.base import Launcher, ServerError, free_port


@dataclass(frozen=True)
class Request:
    """One request the server received and how it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookServer(Launcher):
    """`with WebhookServer() as hooks: post to hooks.url("/sms"); hooks.received("/sms")`."""

    def __init__(self, *, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._requests: list[Request] = []
        self._script: dict[str, deque[int]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        return self.endpoint + (path if path.startswith("/") else f"/{path}")

    def respond(self, path: str, statuses: list[int]) -> None:
        """Answer the next requests to `path` with these statuses, in order, then 200."""
        with self._lock:
            self._script[path].extend(statuses)

    def requests(self, path: str | None = None) -> list[Request]:
        """Every request received (on `path`), whatever it was answered."""
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def received(self, path: str | None = None) -> list[Any]:
        """The JSON bodies of the requests answered 2xx (the deliveries), in order."""
        return [r.json() for r in self.requests(path) if 200 <= r.status < 300]

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            script = self._script.get(path)
            status = script.popleft() if script else 200
            self._requests.append(Request(method, path, headers, body, status))
        return status

    def start(self) -> WebhookServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = owner._answer("POST", self.path, dict(self.headers.items()), body)
                reply = b"ok" if status < 400 else b"error"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # no access log
                return

        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        except OSError as exc:
            raise ServerError(f"webhook server cannot listen on {self.endpoint}: "
                              f"{exc.strerror}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"webhook-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()


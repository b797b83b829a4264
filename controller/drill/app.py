"""The sandbox's site application: one HTTP server per site serving the customer channels.

Owns what a site answers in the sandbox drill, and the faults a scenario injects into it.
Every channel is a path (`/web`, `/api`, `/hotline`, any other) answered `200` with two
headers: `X-Served-By: primary|backup` (what the HAProxy launcher waits for when it
starts) and `X-Site: dc-a|dc-b` (the plan's site name, which the traffic backend's
`observe` and the drill's checks count). Faults are set at run time with
`POST /_fault?mode=MODE&channels=web,api&delay=SECONDS`:

- `ok`: every channel healthy again;
- `down`: the channels answer `503`;
- `slow`: the channels answer after `delay` seconds (beyond a probe's timeout);
- `flap`: every other request on each channel answers `503` (never three failures in a
  row, so nothing is "down", yet availability halves).

`POST /_control?health=STATUS&after=N` is the HAProxy launcher's `/health` switch, kept
so `HaproxyServers.reset()` and `set_health()` work on these servers too. Like the
launcher's servers it speaks keep-alive HTTP/1.1 with one buffered write per response
(`wbufsize = -1`; otherwise Nagle + delayed ACK cost ~44 ms a request). Killing the
primary is done from outside (SIGKILL of this process, then a new one on the same port).

Run as `python -m controller.drill.app LABEL SITE [--port P]`: it prints its port once
bound and serves until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODES = ("ok", "down", "slow", "flap")


class SiteApp(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted primary takes its old port back at once

    def __init__(self, port: int, label: str, site: str):
        super().__init__(("127.0.0.1", port), _Handler)
        self.label, self.site = label, site
        self.lock = threading.Lock()
        self.mode = "ok"
        self.channels: set[str] | None = None  # None: every channel
        self.delay = 1.0
        self.counts: dict[str, int] = {}
        self.health_status = 200
        self.healthy_left: int | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client (or HAProxy) hanging up mid-answer is normal here: say nothing."""

    def affected(self, channel: str) -> bool:
        return self.mode != "ok" and (self.channels is None or channel in self.channels)

    def answer_for(self, channel: str) -> tuple[int, float]:
        """(status, delay before answering) for one request on `channel`."""
        with self.lock:
            if not self.affected(channel):
                return 200, 0.0
            if self.mode == "down":
                return 503, 0.0
            if self.mode == "slow":
                return 200, self.delay
            count = self.counts.get(channel, 0)
            self.counts[channel] = count + 1
            return (503 if count % 2 else 200), 0.0

    def health(self) -> int:
        with self.lock:
            if self.healthy_left is None:
                return self.health_status
            if self.healthy_left > 0:
                self.healthy_left -= 1
                return 200
            return self.health_status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    server: SiteApp

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("X-Served-By", self.server.label)
        self.send_header("X-Site", self.server.site)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            status, delay = self.server.health(), 0.0
        else:
            status, delay = self.server.answer_for(path.strip("/") or "web")
        if delay:
            time.sleep(delay)
        self._send(status, f"{self.server.site} {path} {status}\n".encode())

    do_HEAD = do_GET

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        srv = self.server
        if parts.path == "/_fault":
            mode = query.get("mode", "ok")
            if mode not in MODES:
                self._send(400, f"mode must be one of {', '.join(MODES)}\n".encode())
                return
            with srv.lock:
                srv.mode, srv.counts = mode, {}
                channels = query.get("channels")
                srv.channels = set(channels.split(",")) if channels else None
                srv.delay = float(query.get("delay", srv.delay))
            self._send(200, f"fault {mode}\n".encode())
        elif parts.path == "/_control":
            with srv.lock:
                srv.health_status = int(query.get("health", "200"))
                after = query.get("after")
                srv.healthy_left = int(after) if after is not None else None
            self._send(200, b"ok\n")
        else:
            self._send(404, b"not found\n")

    def log_message(self, format: str, *args: Any) -> None:  # no access log
        pass


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--port"):
        sys.exit("usage: python -m controller.drill.app LABEL SITE [--port P]")
    port = int(argv[3]) if len(argv) == 4 else 0
    server = SiteApp(port, argv[0], argv[1])
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The trip plan's HTTP service for `bench_operator.py`, in a process of its own.

    python tests/benchmarks/trip_service.py PORT

answers every GET with 200 until it receives SIGUSR1, then with 503. Its own process,
not a thread of the benchmark: the benchmark parses watches and lists of every plan
(10,000 of them) while the trip plan's probes (150 ms timeout) ask this service, and a
thread of that process waits for the GIL long enough to fail a probe — a false trip
charged to the controller. Standard library only, started and stopped by PID.
"""

from __future__ import annotations

import http.server
import signal
import sys
import threading
from typing import Any


class Health(http.server.BaseHTTPRequestHandler):
    """200 until `down` is set, then 503."""

    down = threading.Event()

    def do_GET(self) -> None:
        self.send_response(503 if self.down.is_set() else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
    signal.signal(signal.SIGUSR1, lambda *_: Health.down.set())
    server.serve_forever()


if __name__ == "__main__":
    main()

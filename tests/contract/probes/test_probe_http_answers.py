"""HTTP probe against real servers that answer the way real ones do (issue 21, items 5, 11).

- a healthy body written in several pieces with pauses between them (a proxy flushing,
  a chunked answer from an app server) must match `bodyMatch`: the probe reads the body
  up to `maxBody` bytes, not just what happened to be buffered;
- a redirect (302 to a maintenance page) is not healthy unless the plan says it is
  (`acceptRedirects: true`) or lists the code in `expectStatus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller import registry
from controller.model import Sample
from controller.secrets import Secrets


class PieceServer:
    """A raw HTTP/1.1 server: answers every request with `pieces` written `pause` apart.

    Each piece is bytes, so a test controls exactly where the writes split (headers,
    body, chunk framing); with `hang_up` it closes the connection after one answer."""

    def __init__(self, pieces: list[bytes], pause: float = 0.05, hang_up: bool = False):
        self.pieces, self.pause, self.hang_up = pieces, pause, hang_up
        self.requests = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(5)
            try:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(4096)
                        if not data:
                            return
                        buf += data
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    self.requests += 1
                    for i, piece in enumerate(self.pieces):
                        if i:
                            time.sleep(self.pause)
                        conn.sendall(piece)
                    if self.hang_up:
                        return
            except OSError:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[PieceServer] = []

    def make(pieces: list[bytes], pause: float = 0.05, hang_up: bool = False) -> PieceServer:
        started.append(PieceServer(pieces, pause, hang_up))
        return started[-1]

    yield make
    for server in started:
        server.close()


def check(options: dict[str, Any], times: int = 1) -> list[Sample]:
    probe = registry.build("probe", "http", options, secrets=Secrets(), service="web")

    async def run() -> list[Sample]:
        try:
            return [await probe.check() for _ in range(times)]
        finally:
            await probe.aclose()
    return asyncio.run(run())


HEALTHY = b"<html><body><h1>Shop</h1>" + b"x" * 3000 + b"<p>status: all systems go</p></html>"


def test_body_written_in_two_parts_matches(serve: Any) -> None:
    split = HEALTHY.index(b"<p>status")
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
            b"Content-Length: %d\r\n\r\n" % len(HEALTHY))
    server = serve([head + HEALTHY[:split], HEALTHY[split:]], pause=0.05)
    samples = check({"url": f"http://127.0.0.1:{server.port}/", "bodyMatch": "all systems go"},
                    times=5)
    assert [s.ok for s in samples] == [True] * 5, [s.detail for s in samples]
    assert server.requests == 5


def test_chunked_body_in_many_pieces_matches(serve: Any) -> None:
    parts = [HEALTHY[i:i + 700] for i in range(0, len(HEALTHY), 700)]
    chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = serve([head, *chunks], pause=0.02)
    [s] = check({"url": f"http://127.0.0.1:{server.port}/", "bodyMatch": r"status: all \w+ go"})
    assert s.ok, s.detail


def test_body_match_looks_at_the_first_max_body_bytes_only(serve: Any) -> None:
    body = b"a" * 100_000 + b"all systems go"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = serve([head + body[:50_000], body[50_000:]], pause=0.02)
    url = f"http://127.0.0.1:{server.port}/"
    [beyond] = check({"url": url, "bodyMatch": "all systems go"})  # default maxBody 64 KiB
    assert not beyond.ok
    assert "body does not match 'all systems go' (first 65536 bytes read" in beyond.detail
    [within] = check({"url": url, "bodyMatch": "all systems go", "maxBody": 200_000})
    assert within.ok, within.detail


def test_truncated_body_is_a_failure(serve: Any) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    server = serve([head + b"all systems go" + b"x" * 100], hang_up=True)
    [s] = check({"url": f"http://127.0.0.1:{server.port}/", "bodyMatch": "all systems go",
                 "timeout": "2s"})
    assert not s.ok and ("truncated" in s.detail or "without a complete" in s.detail), s.detail


# --- redirects (item 11) ---------------------------------------------------------------------

REDIRECT = (b"HTTP/1.1 302 Found\r\nLocation: https://example.test/maintenance?from=shop\r\n"
            b"Content-Length: 0\r\n\r\n")


def test_a_redirect_is_not_healthy_by_default(serve: Any) -> None:
    server = serve([REDIRECT])
    [s] = check({"url": f"http://127.0.0.1:{server.port}/"})
    assert not s.ok
    assert "status 302 (redirect to https://example.test/maintenance), expected 2xx" in s.detail
    assert "acceptRedirects" in s.detail  # says how to accept it if it is meant
    assert "from=shop" not in s.detail  # no query strings in details


def test_redirects_are_healthy_when_the_plan_says_so(serve: Any) -> None:
    server = serve([REDIRECT])
    url = f"http://127.0.0.1:{server.port}/"
    [opted] = check({"url": url, "acceptRedirects": True})
    assert opted.ok and opted.detail.endswith(": 302")
    [listed] = check({"url": url, "expectStatus": [302]})
    assert listed.ok


def test_a_redirect_with_accept_redirects_is_still_checked_for_the_body(serve: Any) -> None:
    server = serve([REDIRECT])
    [s] = check({"url": f"http://127.0.0.1:{server.port}/", "acceptRedirects": True,
                 "bodyMatch": "all systems go"})
    assert not s.ok and "body does not match" in s.detail


def test_other_statuses_name_what_was_expected(serve: Any) -> None:
    server = serve([b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"])
    url = f"http://127.0.0.1:{server.port}/"
    [plain] = check({"url": url})
    assert not plain.ok and plain.detail.endswith("status 503, expected 2xx")
    [opted] = check({"url": url, "acceptRedirects": True})
    assert opted.detail.endswith("status 503, expected 2xx or 3xx")


def test_accept_redirects_is_documented_in_the_option_schema() -> None:
    from controller.probes.http import HttpOptions

    field = HttpOptions.model_json_schema(by_alias=True)["properties"]["acceptRedirects"]
    assert field["default"] is False
    assert "3xx" in field["description"] and "maintenance" in field["description"]

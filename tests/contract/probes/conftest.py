"""Real loopback servers for the probe contract tests, each on a free port in a thread,
exposed as fixtures (`http_backend`, `tls_backend`, `garbage_port`, `dead_port`,
`dns_server`, `make_backend`, `mute_port`).

- `HttpBackend`: an aiohttp web server that can answer ok, any status, slowly, never
  (hang), flapping, or over TLS with a self-signed certificate;
- `GarbageServer`: accepts TCP and answers bytes that are not HTTP;
- `DnsServer`: a small authoritative UDP DNS server built on dnspython's message API,
  which can also answer SERVFAIL or stay silent;
- `closed_port()`: a port nothing listens on; `mute_port`: one that accepts and never
  speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiohttp import web

from controller.drill.servers.base import free_port as closed_port  # a dead port


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the tests start and stop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class HttpBackend:
    """GET /ok, /status/{code}, /slow?s=, /hang, /flap, /echo-auth, /api/v1/query."""

    def __init__(self, *, tls_dir: Path | None = None,
                 prometheus: Callable[[str], Any] | None = None):
        self.requests = 0
        self.flap = 0
        self.seen_auth: list[str] = []
        self._prometheus = prometheus
        self._hang = asyncio.Event()
        self._lt = LoopThread()
        self.cert: Path | None = None
        ctx = None
        if tls_dir is not None:
            self.cert, key = self_signed(tls_dir)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, key)
        self.port = self._lt.call(self._start(ctx))
        scheme = "https" if ctx else "http"
        self.url = f"{scheme}://{'localhost' if ctx else '127.0.0.1'}:{self.port}"

    async def _start(self, ctx: ssl.SSLContext | None) -> int:
        self._hang = asyncio.Event()
        app = web.Application()
        app.router.add_get("/ok", self._ok)
        app.router.add_get("/status/{code}", self._status)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/hang", self._hang_forever)
        app.router.add_get("/flap", self._flap)
        app.router.add_get("/echo-auth", self._echo_auth)
        app.router.add_get("/api/v1/query", self._query)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _ok(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text="service ok: version 42")

    async def _status(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=int(request.match_info["code"]), text="error page")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0.2")))
        return web.Response(text="finally")

    async def _hang_forever(self, request: web.Request) -> web.Response:
        await self._hang.wait()
        return web.Response(text="too late")

    async def _flap(self, request: web.Request) -> web.Response:
        self.flap += 1
        return web.Response(status=200 if self.flap % 2 else 503)

    async def _echo_auth(self, request: web.Request) -> web.Response:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        return web.Response(status=200 if request.headers.get("Authorization") else 401)

    async def _query(self, request: web.Request) -> web.Response:
        assert self._prometheus is not None
        status, payload = self._prometheus(request.query.get("query", ""))
        if isinstance(payload, str):
            return web.Response(status=status, text=payload)
        return web.json_response(payload, status=status)

    def close(self) -> None:
        async def stop() -> None:
            self._hang.set()
            await self._runner.cleanup()
        self._lt.call(stop())
        self._lt.close()


class GarbageServer:
    """Accepts connections and answers bytes that are not an HTTP response."""

    def __init__(self, payload: bytes = b"SSH-2.0-OpenSSH_9.2 not http at all\r\n\r\n"):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._payload = payload
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(self._payload)
                except OSError:
                    pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


class DnsServer:
    """Authoritative answers from `records` {(name, type): [values]}; mode ok|servfail|silent.

    Queries for a name in `drop` are read and never answered (a nameserver whose upstream
    is dead), whatever the mode; `dropped` counts them.
    """

    def __init__(self, records: dict[tuple[str, str], list[str]], *,
                 host: str = "127.0.0.1", port: int = 0, drop: tuple[str, ...] = ()):
        self.records = {(n.lower().rstrip(".") + ".", t.upper()): v for (n, t), v in
                        records.items()}
        self.drop = {n.lower().rstrip(".") + "." for n in drop}
        self.host = host
        self.mode = "ok"
        self.queries = self.dropped = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.1)
        self._stopped = threading.Event()
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                wire, addr = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            if self.mode == "silent":
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            if name in self.drop:
                self.dropped += 1
                continue
            if self.mode == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in self.records:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, 60, "IN", rdtype, self.records[(name, rdtype)]))
            elif not any(n == name for n, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.flags |= dns.flags.AA
            self._sock.sendto(response.to_wire(), addr)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._sock.close()



@pytest.fixture(scope="module")
def http_backend() -> Iterator[HttpBackend]:
    server = HttpBackend()
    yield server
    server.close()


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[HttpBackend]:
    server = HttpBackend(tls_dir=tmp_path)
    yield server
    server.close()


@pytest.fixture
def make_backend() -> Iterator[Callable[..., HttpBackend]]:
    started: list[HttpBackend] = []

    def make(**kwargs: Any) -> HttpBackend:
        started.append(HttpBackend(**kwargs))
        return started[-1]

    yield make
    for server in started:
        server.close()


@pytest.fixture
def garbage_port() -> Iterator[int]:
    server = GarbageServer()
    yield server.port
    server.close()


@pytest.fixture
def dead_port() -> int:
    return closed_port()


@pytest.fixture
def mute_port() -> Iterator[int]:
    """A listener that completes the TCP handshake (backlog) but never speaks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer({("www.example.test", "A"): ["192.0.2.10"],
                        ("api.example.test", "A"): ["192.0.2.20", "192.0.2.21"],
                        ("www.example.test", "TXT"): ['"site=dc-a"']})
    yield server
    server.close()

"""Real receivers for the notifier tests, and one `channel` fixture over every notifier.

- `hooks`: a real HTTP server (controller.drill.servers.webhook) on a free port, standing
  in for Slack, a generic webhook and an SMS gateway; stopped through its handle;
- `mail`: a real SMTP server (aiosmtpd, controller.drill.servers.mail) offering STARTTLS
  with a throw-away CA and requiring a login; stopped through its handle;
- `channel`: a notifier built through the registry like a plan builds it, parametrized
  over the in-memory fake, webhook, slack and smtp, with what its receiver got back in
  one normalized shape, and a twin whose destination is down. The contract suite runs
  all four through the same tests, so the fake cannot drift from the real notifiers.

- `DripServer`: a real TCP server that answers one byte a second (an HTTP answer after
  reading the request, or an SMTP greeting at once), so no per-operation socket timeout
  ever trips: only a deadline enforced as a whole ends the attempt. It records when each
  connection came and when the client hung up. Stopped through its handle.

Secrets (webhook tokens in URL paths, the bearer token, the SMTP password) are read from
files like a plan reads them, and are the strings no error or log may contain.
"""

from __future__ import annotations

import html
import itertools
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller import registry
from controller.drill.servers.base import free_port as closed_port  # a dead port
from controller.drill.servers.mail import Mail, MailServer
from controller.drill.servers.webhook import WebhookServer
from controller.secrets import Secrets

URL_TOKEN = "T0KEN-9f8e7d6c5b4a"  # in the webhook URL path, as Slack's token is
BEARER = "bearer-5ecr3t-41c2"
SMTP_USER = "failover"
SMTP_PASSWORD = "smtp-pa55word-7d1e"
SECRETS = (URL_TOKEN, BEARER, SMTP_PASSWORD)
FAST = {"attempts": 3, "backoff": "10ms", "timeout": "5s", "deadline": "20s"}
KINDS = ("memory", "webhook", "slack", "smtp")
_COUNTER = itertools.count()


HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n" \
          b"Connection: close\r\n\r\nok"
SMTP_GREETING = b"220 relay.example.test ESMTP ready\r\n"


@dataclass
class Dripped:
    """One connection to a DripServer: when it came, what it sent, when it hung up."""

    accepted: float
    request: bytes = b""
    closed: float | None = None


class DripServer:
    """A real server that answers `answer` one byte every `every` seconds.

    With `greet` it starts at once (an SMTP server's greeting); otherwise it first reads
    an HTTP request (headers and `Content-Length` body). The first `slow` connections
    drip (None: all); later ones get the whole answer at once. `connections` says when
    each came and when the client hung up (monotonic seconds).
    """

    def __init__(self, answer: bytes, *, every: float = 1.0, greet: bool = False,
                 slow: int | None = None):
        self.answer, self.every, self.greet, self.slow = answer, every, greet, slow
        self.connections: list[Dripped] = []
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> DripServer:
        accept = threading.Thread(target=self._accept, name=f"drip-{self.port}", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            record = Dripped(time.monotonic())
            slow = self.slow is None or len(self.connections) < self.slow
            self.connections.append(record)
            worker = threading.Thread(target=self._serve, args=(conn, record, slow),
                                      daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket, record: Dripped, slow: bool) -> None:
        with conn:
            conn.settimeout(5)
            if not self.greet:
                record.request = _read_http(conn)
            if not slow:
                conn.sendall(self.answer)
                record.closed = time.monotonic()
                return
            for byte in self.answer:
                if self._stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
                readable, _, _ = select.select([conn], [], [], self.every)
                if readable and not _drain(conn):  # the client hung up
                    break
            record.closed = time.monotonic()


def _read_http(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _drain(conn: socket.socket) -> bool:
    """Read what the client sent meanwhile; False once it hung up."""
    try:
        return bool(conn.recv(65536))
    except OSError:
        return False


@pytest.fixture
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture
def mail() -> Iterator[MailServer]:
    with MailServer(starttls=True, users={SMTP_USER: SMTP_PASSWORD}) as server:
        yield server


@pytest.fixture
def secret_file(tmp_path: Path) -> Callable[[str], dict[str, str]]:
    """Write a secret to a file and return the plan's reference to it."""

    def write(value: str) -> dict[str, str]:
        path = tmp_path / f"secret-{next(_COUNTER)}"
        path.write_text(value + "\n")
        return {"fromFile": str(path)}

    return write


def build(kind: str, options: dict[str, Any]) -> Any:
    return registry.build("notifier", kind, options, secrets=Secrets())


def hook_path(name: str) -> str:
    return f"/{name}/{URL_TOKEN}"


def webhook_options(url: str, secret_file: Callable[[str], dict[str, str]],
                    **extra: Any) -> dict[str, Any]:
    return {"url": secret_file(url), "token": secret_file(BEARER), **FAST, **extra}


def slack_options(url: str, secret_file: Callable[[str], dict[str, str]],
                  **extra: Any) -> dict[str, Any]:
    return {"url": secret_file(url), **FAST, **extra}


def smtp_options(server: MailServer, secret_file: Callable[[str], dict[str, str]],
                 **extra: Any) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "from": "failover@example.test",
            "starttls": True, "caFile": str(server.ca_file), "username": SMTP_USER,
            "password": secret_file(SMTP_PASSWORD), **FAST, **extra}


# --- one normalized view of what a receiver got ------------------------------------------------


def parse_template(text: str) -> dict[str, Any]:
    """Read the incident-report template (common.render) back into fields."""
    lines = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in lines.items()}
    run, _, link = fields["Run"].partition(" (")
    affected = fields["Affected services"]
    level = fields["Plan / level"].rsplit("level ", 1)[1]
    return {
        "subject": text.splitlines()[0].removeprefix("INCIDENT NOTICE: "),
        "status": fields["Status"], "level": None if level == "-" else int(level),
        "affected": [] if affected == "none down now" else affected.split(", "),
        "estimatedRecovery": fields["Estimated recovery"],
        "run": run, "link": link.removesuffix(")"),
        "recipients": [] if fields["To"] == "-" else fields["To"].split(", "),
    }


def from_document(doc: dict[str, Any]) -> dict[str, Any]:
    return {"subject": doc["subject"], "status": doc["status"], "level": doc["level"],
            "affected": doc["affected"], "estimatedRecovery": doc["estimatedRecovery"],
            "run": doc["run"]["id"], "link": doc["run"]["link"] or "",
            "recipients": doc["recipients"]}


def from_slack(body: dict[str, Any]) -> dict[str, Any]:
    header, status, facts, *context = body["blocks"]
    values = {f["text"].split("\n", 1)[0].strip("*"): html.unescape(f["text"].split("\n", 1)[1])
              for f in facts["fields"]}
    run = values["Run"]
    link = ""
    if run.startswith("<") and "|" in run:
        link, run = run[1:-1].split("|", 1)
    to = context[0]["elements"][0]["text"].removeprefix("To: ").split() if context else []
    affected = values["Affected services"]
    return {"subject": header["text"]["text"],
            "status": html.unescape(status["text"]["text"].removeprefix("*Status:* ")),
            "level": None if values["Level"] == "-" else int(values["Level"]),
            "affected": [] if affected == "none down now" else affected.split(", "),
            "estimatedRecovery": values["Estimated recovery"], "run": run, "link": link,
            "recipients": [html.unescape(t) for t in to]}


def from_mail(m: Mail) -> dict[str, Any]:
    view = parse_template(m.text)
    view["recipients"] = list(m.rcpt_tos)
    return view


@dataclass
class Channel:
    kind: str
    notifier: Any
    received: Callable[[], list[dict[str, Any]]]
    dead: Callable[[], Any]  # a notifier of the same kind whose destination is down
    attempts: Callable[[], int] = field(default=lambda: 0)  # requests the receiver saw


@pytest.fixture(params=KINDS)
def channel(request: pytest.FixtureRequest,
            secret_file: Callable[[str], dict[str, str]]) -> Channel:
    kind: str = request.param
    if kind == "memory":
        key = f"contract-{next(_COUNTER)}"
        fake = build(kind, {"key": key})
        return Channel(kind, fake,
                       received=lambda: [{**n, "affected": list(n["affected"])}
                                         for n in fake.sent()],
                       dead=lambda: build(kind, {"key": key, "fail": True}),
                       attempts=lambda: len(fake.sent()))
    if kind in ("webhook", "slack"):
        server: WebhookServer = request.getfixturevalue("hooks")
        path = hook_path(kind)
        make = webhook_options if kind == "webhook" else slack_options
        notifier = build(kind, make(server.url(path), secret_file))
        shape = from_document if kind == "webhook" else from_slack
        dead_url = f"http://127.0.0.1:{closed_port()}{path}"
        return Channel(kind, notifier,
                       received=lambda: [shape(b) for b in server.received(path)],
                       dead=lambda: build(kind, make(dead_url, secret_file)),
                       attempts=lambda: len(server.requests(path)))
    relay: MailServer = request.getfixturevalue("mail")
    notifier = build(kind, smtp_options(relay, secret_file))
    return Channel(kind, notifier,
                   received=lambda: [from_mail(m) for m in relay.messages()],
                   dead=lambda: build(kind, smtp_options(relay, secret_file,
                                                         port=closed_port())),
                   attempts=lambda: relay.attempts)

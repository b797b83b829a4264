"""Mail receiver: a real local SMTP server (aiosmtpd) that keeps every message it accepts.

Owns one `aiosmtpd.controller.Controller` on a free loopback port: its own asyncio loop in
a thread of this process, started with `start()` (which waits until the server answers)
and stopped through its handle with `stop()`; there is no child process, so no PID. It
stands in for the organisation's mail relay in the contract tests and the sandbox drill.
Options make it as strict as a real relay: `starttls=True` offers STARTTLS with a
throw-away CA and server certificate made in a temp directory (`ca_file` is what a
client trusts), and `users={name: password}` requires AUTH (only after STARTTLS when it
is offered, as relays do). `respond(["451 4.3.0 try again"])` scripts the answers to the
next DATA commands to show retries; then messages are accepted with `250 OK`.
"""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from controller.drill.servers.base import Launcher, ServerError, free_port
from controller.drill.servers.certs import write_ca_and_cert


@dataclass(frozen=True)
class Mail:
    """One accepted message: envelope, parsed message, who logged in, whether over TLS."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    login: str | None
    tls: bool

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        """The plain-text body with the wire's CRLF line ends turned back into LF."""
        return str(self.message.get_content()).replace("\r\n", "\n")


class MailServer(Launcher):
    """`with MailServer(starttls=True, users={"bot": pw}) as mail: ...; mail.messages()`."""

    def __init__(self, *, port: int | None = None, starttls: bool = False,
                 users: dict[str, str] | None = None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.starttls = starttls
        self.users = dict(users or {})
        self.ca_file: Path | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._controller: Any = None
        self._messages: list[Mail] = []
        self._script: deque[str] = deque()
        self._attempts = 0
        self._lock = threading.Lock()

    def respond(self, answers: list[str]) -> None:
        """Answer the next DATA commands with these SMTP replies, in order, then 250."""
        with self._lock:
            self._script.extend(answers)

    def messages(self) -> list[Mail]:
        """The messages accepted so far, in order."""
        with self._lock:
            return list(self._messages)

    @property
    def attempts(self) -> int:
        """How many DATA commands arrived, accepted or not."""
        with self._lock:
            return self._attempts

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace")
            if self.users.get(login) == auth_data.password.decode(errors="replace"):
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._attempts += 1
            answer = self._script.popleft() if self._script else "250 OK"
            if answer.startswith("250"):
                raw = envelope.original_content or envelope.content
                parsed = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(parsed, EmailMessage)
                self._messages.append(Mail(
                    mail_from=envelope.mail_from, rcpt_tos=tuple(envelope.rcpt_tos),
                    message=parsed, login=session.auth_data if session.authenticated else None,
                    tls=session.ssl is not None))
        return answer

    def start(self) -> MailServer:
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:
            raise ServerError(f"aiosmtpd is not installed ({exc}): pip install aiosmtpd") \
                from None
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # no per-command log
        params: dict[str, Any] = {}
        if self.starttls:
            self._dir = tempfile.TemporaryDirectory(prefix="failover-mail-")
            self.ca_file, cert, key = write_ca_and_cert(Path(self._dir.name), name="smtp")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            params["tls_context"] = context
        if self.users:
            params.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.starttls)
        self._controller = Controller(self, hostname=self.host, port=self.port,
                                      ready_timeout=20, **params)
        try:
            self._controller.start()  # returns once the server answers a connection
        except Exception as exc:
            self.stop()
            raise ServerError(f"SMTP server on {self.host}:{self.port} did not start: "
                              f"{exc}") from None
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop(no_assert=True)
        tmp, self._dir = self._dir, None
        if tmp is not None:
            tmp.cleanup()


"""SMTP e-mail notifier: the incident-report template as a plain-text e-mail.

Owns e-mail delivery (the level-3 route of the emergency plans: "e-mail within 30 min"):
one message per notice to the recipients that are e-mail addresses (or `to` when the
route names none), subject `<subject>: <status>`, body `common.render`, and a
`References` header per run so a mail client threads a run's updates together.
Header values are kept to one line (`header`): a FAILED notice's status carries the
failed command's multi-line stderr, and a header with a line feed is refused by the
e-mail library, so the subject is the status folded onto one line (and shortened),
while the body keeps the full text. STARTTLS is optional (`starttls: true`, verified
against the system CAs or `caFile`); a `username` with a `password` from a secret logs
in, and only after STARTTLS, so the password never crosses the network in the clear.
The password never reaches a log line, an exception or the audit. SMTP 4xx answers and
dropped connections are retried within the deadline, which holds for the whole
exchange (the connection is shut when it runs out); 5xx answers (rejected login,
refused recipient) are not.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from pydantic import Field, model_validator

from controller.model import Notice
from controller.notify import Notifier
from controller.notify.common import (
    Attempt,
    DeliveryOptions,
    NotifyError,
    TransientNotifyError,
    deliver,
    one_line,
    render,
    shutdown,
)
from controller.secrets import SecretError, SecretRef, Secrets, redact


class SmtpOptions(DeliveryOptions):
    host: str = Field(min_length=1)
    port: int = Field(25, ge=1, le=65535)
    sender: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$",
                        description="the From address")
    starttls: bool = Field(False, description="upgrade the connection with STARTTLS")
    ca_file: str | None = Field(None, alias="caFile",
                                description="CA bundle that signs the server's certificate")
    username: str | None = None
    password: SecretRef | None = None
    to: list[str] = Field(default_factory=list,
                          description="addresses used when a route names none")

    @model_validator(mode="after")
    def _login(self) -> SmtpOptions:
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password (a secret reference), or neither")
        if self.password is not None and not self.starttls:
            raise ValueError("a password is only sent over STARTTLS; set `starttls: true`")
        return self


def addresses(recipients: tuple[str, ...] | list[str]) -> list[str]:
    """The recipients that are e-mail addresses (`@all`, group names and `sms:` are not)."""
    return [r for r in recipients
            if "@" in r and not r.startswith("@") and " " not in r and ":" not in r]


SUBJECT_LENGTH = 200


def header(value: str, limit: int = 0) -> str:
    """A header value on one line (no line feed, carriage return or other control
    character), shortened to `limit` characters with '\u2026' when one is given."""
    text = one_line(value)
    return text if not limit or len(text) <= limit else text[: limit - 1] + "\u2026"


def message(notice: Notice, *, sender: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = header(f"{notice.subject}: {notice.status}", SUBJECT_LENGTH)
    msg["From"] = header(sender)
    msg["To"] = header(", ".join(to))
    msg["Date"] = formatdate(notice.at, usegmt=True) if notice.at else formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="failoverctl")
    if notice.run_id:
        run = header(notice.run_id)
        msg["References"] = f"<{run.replace(' ', '-')}@failoverctl>"
        msg["X-Failover-Run"] = run
    if notice.level is not None:
        msg["X-Failover-Level"] = str(notice.level)
    msg.set_content(render(notice))
    return msg


class _Client(smtplib.SMTP):
    """An SMTP client made without connecting, so the attempt can watch its socket from
    the start, that still checks the server's name on STARTTLS (as `SMTP(host)` does)."""

    def __init__(self, host: str, *, timeout: float):
        super().__init__(timeout=timeout)
        self._host = host


class SmtpNotifier(Notifier):
    """`send(notice=...)` e-mails the notice, retried on transient failures."""

    Options = SmtpOptions

    def __init__(self, options: SmtpOptions, *, secrets: Any = None):
        self.options = options
        self.where = f"smtp {options.host}:{options.port}"
        self._password: str | None = None
        if options.password is not None:
            try:
                self._password = (secrets or Secrets()).reveal(options.password).strip()
            except SecretError as exc:
                raise NotifyError(f"{self.where}: {exc}") from None

    def __repr__(self) -> str:
        return f"SmtpNotifier({self.where})"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.options.ca_file)

    def _send_once(self, msg: EmailMessage, to: list[str], attempt: Attempt) -> None:
        opts = self.options
        client = _Client(opts.host, timeout=attempt.timeout)  # not connected yet
        attempt.on_abort(lambda: shutdown(client.sock))  # whatever socket it has by then
        try:
            with client:
                code, greeting = client.connect(opts.host, opts.port)
                if attempt.aborted:
                    shutdown(client.sock)
                if code != 220:
                    raise smtplib.SMTPConnectError(code, greeting)
                client.ehlo()
                if opts.starttls:
                    client.starttls(context=self._context())
                    client.ehlo()
                if opts.username is not None and self._password is not None:
                    client.login(opts.username, self._password)
                refused = client.send_message(msg, from_addr=opts.sender, to_addrs=to)
        except smtplib.SMTPAuthenticationError as exc:
            raise NotifyError(f"{self.where}: login as {opts.username} rejected "
                              f"({exc.smtp_code}); check the password secret") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise NotifyError(f"{self.where}: every recipient refused: "
                              f"{', '.join(sorted(exc.recipients))}") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise NotifyError(f"{self.where}: {redact(str(exc))} (STARTTLS or AUTH not "
                              "offered by the server)") from None
        except smtplib.SMTPResponseException as exc:
            text = redact(exc.smtp_error.decode(errors="replace")
                          if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error))
            error = f"{self.where} answered {exc.smtp_code} {text}"
            if 400 <= exc.smtp_code < 500:
                raise TransientNotifyError(error) from None
            raise NotifyError(error) from None
        except ssl.SSLError as exc:
            raise NotifyError(f"{self.where}: TLS failed: {redact(str(exc))}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientNotifyError(f"{self.where} unreachable: "
                                       f"{redact(str(exc)) or type(exc).__name__}") from None
        if refused:
            raise NotifyError(f"{self.where}: delivered, but refused for "
                              f"{', '.join(sorted(refused))}")

    def send(self, *, notice: Notice) -> None:
        to = addresses(notice.recipients) or list(self.options.to)
        if not to:
            raise NotifyError(f"{self.where}: no e-mail address among the recipients "
                              f"({', '.join(notice.recipients) or 'none'}); give addresses "
                              "in the route or `to:` in the options")
        msg = message(notice, sender=self.options.sender, to=to)
        deliver(lambda attempt: self._send_once(msg, to, attempt), self.options,
                where=self.where)

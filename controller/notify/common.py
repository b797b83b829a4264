"""What every notifier shares: the incident-report template and bounded delivery.

The emergency plans ask that every notice follow one incident-report template (fault
status, affected services, estimated recovery time) whatever carries it, so the text is
rendered here once (`render`, `summary` for chat, `sms` for one GSM-7 text message,
`document` for JSON) and each backend only wraps it in its own format.

Delivery is the same for every backend: a few attempts with short, doubling back-off
inside an overall deadline, and the deadline holds *as a whole*. Socket timeouts bound
one read or write, so a destination that answers one byte a second never trips them; so
each attempt runs in a worker thread that `deliver` waits for at most the attempt's
budget (`timeout`, cut to what is left of `deadline`), and when the budget runs out the
attempt's sockets are shut down (`Attempt.on_abort`) and `deliver` gives up on it. A
notice therefore never takes longer than its `deadline` (plus a fraction of a second
to unwind), whatever the other end does. Only `TransientNotifyError` (unreachable, 5xx,
429, SMTP 4xx, an attempt that ran out of its own timeout) is retried. Inside a notify
step the step's fence is checked before every attempt, and a cancelled step cuts the
attempt in flight short.

On final failure `send` raises `NotifyError`, whose message names the destination
without its secret parts (never a URL path, token or password) and went through
`secrets.redact`. It is a `PermanentError`, so a notify step does not retry what the
notifier already retried.
"""

from __future__ import annotations

import contextvars
import http.client
import json
import logging
import socket
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.model import Notice, PermanentError
from controller.plan import Duration
from controller.secrets import SecretError, SecretRef, Secrets, redact, remember

log = logging.getLogger(__name__)
SMS_LENGTH = 160
UNWIND = 0.5  # how long an aborted attempt may take to notice its sockets were shut
_POLL = 0.1  # how often a waiting `deliver` looks at the step's fence


class NotifyError(PermanentError):
    """A notice was not delivered; the message is safe to log, audit and show."""


class TransientNotifyError(NotifyError):
    """One attempt failed in a way another attempt may fix (retried within the deadline)."""


class DeliveryOptions(BaseModel):
    """Retry bounds shared by every notifier's `Options`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    timeout: Duration = Field(5.0, gt=0, description="one attempt at most this long, "
                              "from connecting to the last byte of the answer")
    attempts: int = Field(3, ge=1, le=10, description="attempts before giving up")
    backoff: Duration = Field(0.5, description="wait before the second attempt; doubles")
    deadline: Duration = Field(15.0, gt=0, description="all attempts and waits together, "
                               "enforced as a whole")


def shutdown(sock: socket.socket | None) -> None:
    """Shut a socket down from another thread, so a read blocked on it returns at once.
    A socket already closed (or not yet connected) has nothing left to stop."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed, detached or never connected: nothing is blocked on it
        return


class Attempt:
    """One delivery attempt: its time budget (`timeout`, seconds, for connecting and
    every socket operation) and the means to cut it short. A notifier registers how to
    stop its connection (`on_abort`); `deliver` calls `abort` when the budget is spent."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._stops: list[Callable[[], None]] = []
        self.aborted = False

    def on_abort(self, stop: Callable[[], None]) -> None:
        """Run `stop` when the attempt is aborted (at once if it already was)."""
        with self._lock:
            if not self.aborted:
                self._stops.append(stop)
                return
        stop()

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            stops, self._stops = self._stops, []
        for stop in stops:
            stop()

    def connection(self, cls: Any) -> Callable[..., Any]:
        """An `http.client` connection class whose socket this attempt can shut down,
        also while it connects (a socket connected after the abort is shut at once)."""
        attempt = self

        def make(host: str, **kwargs: Any) -> Any:
            conn = cls(host, **kwargs)
            attempt.on_abort(lambda: shutdown(conn.sock))
            connect = conn.connect

            def watched() -> None:
                connect()
                if attempt.aborted:
                    shutdown(conn.sock)

            conn.connect = watched
            return conn

        return make


class _OutOfTime(Exception):
    """An attempt used its whole budget; it was aborted."""


def _bounded(send_once: Callable[[Attempt], object], attempt: Attempt, where: str) -> None:
    """Run one attempt in a worker thread and wait at most its budget for it; abort it
    (and raise `_OutOfTime`) when the budget runs out, or `Cancelled` when the step it
    belongs to is cancelled."""
    outcome: list[BaseException] = []
    finished = threading.Event()
    context = contextvars.copy_context()

    def work() -> None:
        try:
            context.run(send_once, attempt)
        except BaseException as exc:  # handed to the waiting caller, which raises it
            outcome.append(exc)
        finally:
            finished.set()

    threading.Thread(target=work, name=f"notice {where}", daemon=True).start()
    fence = fencing.current()
    until = time.monotonic() + attempt.timeout
    while not finished.wait(max(0.0, min(_POLL, until - time.monotonic()))):
        if fence is not None and fence.cancelled:
            attempt.abort()
            finished.wait(UNWIND)
            fence.check()
        if time.monotonic() >= until:
            attempt.abort()
            finished.wait(UNWIND)
            raise _OutOfTime()
    if outcome:
        raise outcome[0]


def deliver(send_once: Callable[[Attempt], object], options: DeliveryOptions, *,
            where: str) -> int:
    """Call `send_once(attempt)` until it succeeds, at most `attempts` times, and return
    the number of attempts; never take longer than `deadline` (+ `UNWIND`). On failure
    raise NotifyError (redacted), saying how many attempts were made."""
    started = time.monotonic()
    end = started + options.deadline
    count = 0
    while True:
        fencing.check()  # in a notify step: a cancelled step makes no further attempt
        left = end - time.monotonic()
        count += 1
        budget = max(0.05, min(options.timeout, left))
        try:
            _bounded(send_once, Attempt(budget), where)
            return count
        except _OutOfTime:
            if time.monotonic() >= end - 0.01:
                raise NotifyError(
                    f"{where}: not delivered within its deadline of {options.deadline:g} s "
                    f"(no complete answer in time; {_tries(count)})") from None
            error: NotifyError = TransientNotifyError(
                f"{where}: no complete answer within the attempt timeout of "
                f"{options.timeout:g} s")
        except TransientNotifyError as exc:
            error = exc
        except NotifyError as exc:
            raise NotifyError(f"{redact(str(exc))} ({_tries(count)})") from None
        except (fencing.Cancelled, fencing.LostLease):
            raise  # the step was told to stop: not a delivery failure
        except Exception as exc:  # a bug or an unexpected library error: same safe report
            raise NotifyError(f"{where}: {type(exc).__name__}: {redact(str(exc))} "
                              f"({_tries(count)})") from None
        if count >= options.attempts:
            raise NotifyError(f"{redact(str(error))} ({_tries(count)})") from None
        wait = options.backoff * 2 ** (count - 1)
        left = end - time.monotonic()
        if wait >= left:
            raise NotifyError(f"{redact(str(error))} ({_tries(count)}; the deadline of "
                              f"{options.deadline:g} s leaves no time for another)") from None
        log.warning("notice via %s: attempt %d failed: %s; retrying", where, count,
                    redact(str(error)))
        fencing.pause(wait)


def _tries(count: int) -> str:
    return f"after {count} attempt{'s' if count != 1 else ''}"


# --- secrets in URLs -----------------------------------------------------------------------


def reveal_url(secrets: Secrets, ref: SecretRef, *, kind: str) -> tuple[str, str]:
    """Read a webhook URL from its secret; return (url, where) where `where` names only
    the scheme, host and port. The path and query (Slack's token lives there) are
    remembered as secret too, so they are scrubbed even when shown apart from the URL."""
    try:
        url = secrets.reveal(ref).strip()
    except SecretError as exc:
        raise NotifyError(f"{kind}: {exc}") from None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(f"{kind}: the URL in {ref.describe()} is not an http(s) URL")
    hidden = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(hidden) >= 8:
        remember(hidden)
    port = f":{parts.port}" if parts.port else ""
    return url, f"{kind} {parts.scheme}://{parts.hostname}{port}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is misconfigured; following it would turn POST into GET."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


class _WatchedHTTP(urllib.request.HTTPHandler):
    def __init__(self, attempt: Attempt):
        super().__init__()
        self.attempt = attempt

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self.attempt.connection(http_class), req, **kwargs)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, attempt: Attempt):
        super().__init__()
        self.attempt = attempt

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self.attempt.connection(http_class), req, **kwargs)


def post_json(url: str, document: Any, *, attempt: Attempt, where: str,
              headers: dict[str, str] | None = None) -> bytes:
    """POST one JSON document; 2xx is success. 408/425/429/5xx and network errors are
    transient; any other answer is permanent (a wrong URL or token will not heal). The
    connection (also through a proxy from the environment) is the attempt's to abort."""
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "failoverctl",
                 **(headers or {})})
    opener = urllib.request.build_opener(_NoRedirect, _WatchedHTTP(attempt),
                                         _WatchedHTTPS(attempt))
    try:
        with opener.open(request, timeout=attempt.timeout) as reply:
            return bytes(reply.read(65536))
    except urllib.error.HTTPError as exc:
        code = exc.code
        exc.close()
        if code in (408, 425, 429) or code >= 500:
            raise TransientNotifyError(f"{where} answered HTTP {code}") from None
        raise NotifyError(f"{where} answered HTTP {code}; not retried: check the URL, "
                          "its token and the payload") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TransientNotifyError(f"{where} unreachable: {redact(str(reason))}") from None


# --- the incident-report template -----------------------------------------------------------


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at)) if at is not None else "-"


def _level(notice: Notice) -> str:
    return f"level {notice.level}" if notice.level is not None else "level -"


def affected_text(notice: Notice) -> str:
    return ", ".join(notice.affected) if notice.affected else "none down now"


def run_text(notice: Notice) -> str:
    if notice.run_id is None:
        return "-"
    return f"{notice.run_id} ({notice.link})" if notice.link else notice.run_id


def _field(label: str, value: str) -> str:
    """One template line; the continuation lines of a multi-line value (a FAILED step's
    stderr) are indented under it, so every field still starts a line of its own."""
    head, *rest = value.splitlines() or [""]
    return "\n".join([f"{label:<20}{head}", *(f"{'':<20}{line}" for line in rest)])


def render(notice: Notice) -> str:
    """The incident-report template, plain text, the same for every channel."""
    lines = [
        f"INCIDENT NOTICE: {one_line(notice.subject)}",
        _field("Time:", _when(notice.at)),
        _field("Plan / level:", f"{notice.plan} / {_level(notice)}"),
        _field("Status:", notice.status),
        _field("Affected services:", affected_text(notice)),
        _field("Estimated recovery:", notice.estimated_recovery or "unknown"),
        _field("Run:", run_text(notice)),
        _field("To:", ", ".join(notice.recipients) or "-"),
    ]
    if notice.body:
        lines += ["", notice.body]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    """`text` on one line: every run of whitespace (newlines, tabs, Unicode line and
    paragraph separators) and every control character becomes one space."""
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
                      for c in text)
    return " ".join(cleaned.split())


def summary(notice: Notice, limit: int = SMS_LENGTH) -> str:
    """The template in one line of at most `limit` characters (a chat fallback text):
    status first."""
    level = f"L{notice.level}" if notice.level is not None else "L-"
    text = one_line(f"{level} {notice.plan}: {notice.status}. Down: {affected_text(notice)}. "
                    f"ETA: {notice.estimated_recovery or 'unknown'}. "
                    f"Run {notice.run_id or '-'}")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --- SMS: one GSM-7 part ----------------------------------------------------------------------

# The GSM 03.38 default alphabet without its control characters (LF, CR, ESC): a text of
# these only is sent as 7-bit, 160 characters to one part. One character outside it and
# the whole text goes as UCS-2, 70 characters a part: a 160-character notice becomes 3.
GSM7 = frozenset(
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\u00d8\u00f8\u00c5\u00e5"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\u00c6\u00e6"
    "\u00df\u00c9 !\"#\u00a4%&'()*+,-./0123456789:;<=>?\u00a1"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7\u00bf"
    "abcdefghijklmnopqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0")
# Look-alikes for what status texts commonly carry; also the GSM-7 extension table
# ([ ] { } ~ ^ \\ | \u20ac), whose characters take two septets and which some gateways
# mangle: mapped to basic characters, one SMS character stays one septet.
_SMS_MAP = {
    "\u2026": "...", "\u2014": "-", "\u2013": "-", "\u2010": "-", "\u2011": "-",
    "\u2012": "-", "\u2212": "-", "\u2018": "'", "\u2019": "'", "\u201a": "'",
    "\u2032": "'", "`": "'", "\u00b4": "'", "\u201c": '"', "\u201d": '"',
    "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2033": '"', "\u2192": "->",
    "\u2190": "<-", "\u21d2": "=>", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=",
    "\u00d7": "x", "\u2022": "*", "\u00b7": ".", "\u20ac": "EUR", "[": "(", "]": ")",
    "{": "(", "}": ")", "~": "-", "^": "", "\\": "/", "|": "/",
    # letters without a decomposition to a base letter
    "\u0141": "L", "\u0142": "l", "\u0110": "D", "\u0111": "d", "\u0131": "i",
    "\u00f0": "d", "\u00d0": "D", "\u00fe": "th", "\u00de": "Th", "\u0153": "oe",
    "\u0152": "OE",
}


def gsm7(text: str) -> str:
    """`text` in the GSM-7 default alphabet, on one line: look-alikes mapped (\u2026 ->
    ..., \u2014 -> -, quotes), accents dropped where the alphabet lacks the letter
    (\u00e7 -> c), anything else becomes one '?' per run."""
    out: list[str] = []
    for char in one_line(text):
        if char in GSM7:
            out.append(char)
            continue
        if char in _SMS_MAP:
            out.append(_SMS_MAP[char])
            continue
        plain = "".join(c for c in unicodedata.normalize("NFKD", char)
                        if not unicodedata.combining(c))
        plain = "".join(_SMS_MAP.get(c, c) for c in plain)
        if plain and all(c in GSM7 for c in plain):
            out.append(plain)
        elif not out or out[-1] != "?":
            out.append("?")
    return " ".join("".join(out).split())


def sms(notice: Notice, limit: int = SMS_LENGTH) -> str:
    """The notice as one SMS: GSM-7 only, at most `limit` characters, the run id first
    (what a reader needs to find the run, never the part cut off), then the level, the
    status, the services down and the estimate; what does not fit ends in '...'."""
    level = f"L{notice.level}" if notice.level is not None else "L-"
    head = gsm7(notice.run_id or notice.plan)[:limit]
    rest = gsm7(f"{level} {notice.plan}: {notice.status}. Down: {affected_text(notice)}. "
                f"ETA: {notice.estimated_recovery or 'unknown'}")
    text = f"{head} {rest}".strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def document(notice: Notice) -> dict[str, Any]:
    """The template as a JSON document (generic webhooks, SMS gateways: `message`
    is the one GSM-7 SMS to forward as is)."""
    return {
        "type": "failover.notice", "version": 1,
        "plan": notice.plan, "level": notice.level, "subject": notice.subject,
        "status": notice.status, "affected": list(notice.affected),
        "estimatedRecovery": notice.estimated_recovery,
        "run": {"id": notice.run_id, "link": notice.link or None},
        "recipients": list(notice.recipients), "at": notice.at,
        "time": _when(notice.at), "message": sms(notice), "text": render(notice),
    }

"""What every notifier shares: the incident-report template and bounded delivery.

The emergency plans ask that every notice follow one incident-report template (fault
status, affected services, estimated recovery time) whatever carries it, so the text is
rendered here once (`render`, `summary` for SMS, `document` for JSON) and each backend
only wraps it in its own format.

Delivery is the same for every backend: a few attempts with short, doubling back-off
inside an overall deadline (tenacity), each attempt bounded by its own timeout; only
`TransientNotifyError` (unreachable, 5xx, 429, SMTP 4xx) is retried. On final failure
`send` raises `NotifyError`, whose message names the destination without its secret
parts (never a URL path, token or password) and went through `secrets.redact`. It is a
`PermanentError`, so a notify step does not retry what the notifier already retried.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from controller.model import Notice, PermanentError
from controller.plan import Duration
from controller.secrets import SecretError, SecretRef, Secrets, redact, remember

log = logging.getLogger(__name__)
SMS_LENGTH = 160


class NotifyError(PermanentError):
    """A notice was not delivered; the message is safe to log, audit and show."""


class TransientNotifyError(NotifyError):
    """One attempt failed in a way another attempt may fix (retried within the deadline)."""


class DeliveryOptions(BaseModel):
    """Retry bounds shared by every notifier's `Options`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    timeout: Duration = Field(5.0, gt=0, description="one attempt at most this long")
    attempts: int = Field(3, ge=1, le=10, description="attempts before giving up")
    backoff: Duration = Field(0.5, description="wait before the second attempt; doubles")
    deadline: Duration = Field(15.0, gt=0, description="all attempts and waits together")


def deliver(send_once: Callable[[float], object], options: DeliveryOptions, *,
            where: str) -> int:
    """Call `send_once(timeout)` until it succeeds, at most `attempts` times and within
    `deadline`; return the number of attempts, or raise NotifyError (redacted)."""
    started = time.monotonic()
    count = 0

    def attempt() -> None:
        nonlocal count
        count += 1
        left = options.deadline - (time.monotonic() - started)
        send_once(max(0.05, min(options.timeout, left)))

    def wait(state: RetryCallState) -> float:
        left = options.deadline - (time.monotonic() - started)
        return max(0.0, min(options.backoff * 2 ** (state.attempt_number - 1), left))

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("notice via %s: attempt %d failed: %s; retrying", where,
                    state.attempt_number, redact(str(exc)))

    retrying = Retrying(
        stop=stop_after_attempt(options.attempts) | stop_after_delay(options.deadline),
        wait=wait, retry=retry_if_exception_type(TransientNotifyError), reraise=True,
        before_sleep=before_sleep)
    try:
        retrying(attempt)
    except NotifyError as exc:
        raise NotifyError(f"{redact(str(exc))} ({_tries(count)})") from None
    except Exception as exc:  # a bug or an unexpected library error: same safe report
        raise NotifyError(f"{where}: {type(exc).__name__}: {redact(str(exc))} "
                          f"({_tries(count)})") from None
    return count


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


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, document: Any, *, timeout: float, where: str,
              headers: dict[str, str] | None = None) -> bytes:
    """POST one JSON document; 2xx is success. 408/425/429/5xx and network errors are
    transient; any other answer is permanent (a wrong URL or token will not heal)."""
    request = urllib.request.Request(
        url, data=json.dumps(document).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "failoverctl",
                 **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
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


def render(notice: Notice) -> str:
    """The incident-report template, plain text, the same for every channel."""
    lines = [
        f"INCIDENT NOTICE: {notice.subject}",
        f"Time:               {_when(notice.at)}",
        f"Plan / level:       {notice.plan} / {_level(notice)}",
        f"Status:             {notice.status}",
        f"Affected services:  {affected_text(notice)}",
        f"Estimated recovery: {notice.estimated_recovery or 'unknown'}",
        f"Run:                {run_text(notice)}",
        f"To:                 {', '.join(notice.recipients) or '-'}",
    ]
    if notice.body:
        lines += ["", notice.body]
    return "\n".join(lines) + "\n"


def summary(notice: Notice, limit: int = SMS_LENGTH) -> str:
    """The template in one line of at most `limit` characters (one SMS): status first."""
    level = f"L{notice.level}" if notice.level is not None else "L-"
    text = (f"{level} {notice.plan}: {notice.status}. Down: {affected_text(notice)}. "
            f"ETA: {notice.estimated_recovery or 'unknown'}. Run {notice.run_id or '-'}")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def document(notice: Notice) -> dict[str, Any]:
    """The template as a JSON document (generic webhooks, SMS gateways)."""
    return {
        "type": "failover.notice", "version": 1,
        "plan": notice.plan, "level": notice.level, "subject": notice.subject,
        "status": notice.status, "affected": list(notice.affected),
        "estimatedRecovery": notice.estimated_recovery,
        "run": {"id": notice.run_id, "link": notice.link or None},
        "recipients": list(notice.recipients), "at": notice.at,
        "time": _when(notice.at), "message": summary(notice), "text": render(notice),
    }

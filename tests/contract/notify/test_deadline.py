"""A notifier's `deadline` holds as a whole, against real servers that answer one byte a
second (so no per-operation socket timeout ever trips): the webhook, Slack and SMTP
notifiers give up at the deadline (plus a fraction of a second), say so, and hang up
the connection rather than leave it dripping; an attempt that outlives its own
`timeout` is cut and retried within the deadline; a notify step that is cancelled cuts
its attempt in flight at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller import fencing
from controller.model import Notice
from controller.notify.common import UNWIND, NotifyError
from tests.contract.notify.conftest import (
    HTTP_OK,
    SMTP_GREETING,
    DripServer,
    build,
    hook_path,
    slack_options,
    webhook_options,
)

NOTICE = Notice(plan="notify-drill", level=3, subject="[notify-drill] level 3 failover",
                status="failover started: tripped", affected=("web",),
                estimated_recovery="unknown", run_id="notify-drill-failover-9",
                recipients=("shift-lead@example.test",), at=1_700_000_000.0)
MARGIN = UNWIND + 0.5  # unwinding the aborted attempt, and a loaded machine

SecretFile = Callable[[str], dict[str, str]]


def timed(send: Callable[[], Any]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        send()
    except BaseException as exc:  # the caller asserts on it
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def smtp_to(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "from": "failover@example.test",
            "backoff": "10ms", **extra}


@pytest.mark.parametrize("kind", ["webhook", "slack", "smtp"])
def test_a_dripping_destination_is_given_up_at_the_deadline(
        kind: str, secret_file: SecretFile) -> None:
    with DripServer(SMTP_GREETING if kind == "smtp" else HTTP_OK,
                    greet=kind == "smtp") as drip:
        limits = {"timeout": "5s", "deadline": "2s", "attempts": 3}
        if kind == "smtp":
            notifier = build(kind, smtp_to(drip.port, **limits))
        else:
            make = webhook_options if kind == "webhook" else slack_options
            notifier = build(kind, make(drip.url(hook_path(kind)), secret_file) | limits)
        took, error = timed(lambda: notifier.send(notice=NOTICE))
        assert isinstance(error, NotifyError), error
        assert "not delivered within its deadline of 2 s" in str(error)
        assert "(no complete answer in time; after 1 attempt)" in str(error)
        assert 2.0 <= took <= 2.0 + MARGIN, took
        [conn] = drip.connections  # it was really trying, once
        if kind != "smtp":
            assert b"POST " in conn.request
        deadline = time.monotonic() + 3
        while conn.closed is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.closed is not None, "the connection was left open"
        assert conn.closed - conn.accepted <= 2.0 + 1.5  # hung up, not left dripping


def test_an_attempt_past_its_timeout_is_cut_and_retried_within_the_deadline(
        secret_file: SecretFile) -> None:
    with DripServer(HTTP_OK) as drip:
        notifier = build("webhook", webhook_options(drip.url(hook_path("sms")), secret_file)
                         | {"timeout": "1s", "deadline": "10s", "attempts": 3,
                            "backoff": "10ms"})
        took, error = timed(lambda: notifier.send(notice=NOTICE))
    assert isinstance(error, NotifyError), error
    assert str(error).endswith("no complete answer within the attempt timeout of 1 s "
                               "(after 3 attempts)"), error
    assert len(drip.connections) == 3
    assert 3.0 <= took < 8.0, took  # three cut attempts; one left to drip takes a minute


def test_a_retry_after_a_cut_attempt_delivers(secret_file: SecretFile) -> None:
    # the first connection drips (faster than any socket timeout), later ones answer
    with DripServer(HTTP_OK, slow=1, every=0.5) as drip:
        notifier = build("webhook", webhook_options(drip.url(hook_path("sms")), secret_file)
                         | {"timeout": "1s", "deadline": "10s", "backoff": "10ms"})
        took, error = timed(lambda: notifier.send(notice=NOTICE))
    assert error is None
    assert len(drip.connections) == 2 and took <= 1.0 + MARGIN + 1.0


def test_a_cancelled_notify_step_cuts_its_attempt_in_flight(secret_file: SecretFile) -> None:
    with DripServer(HTTP_OK) as drip:
        notifier = build("webhook", webhook_options(drip.url(hook_path("sms")), secret_file)
                         | {"timeout": "10s", "deadline": "10s"})
        fence = fencing.Fence(1, "ctl-1", label="run/notify-incident")
        threading.Timer(0.5, fence.cancel, args=("the step's timeout passed",)).start()
        with fencing.scope(fence):
            took, error = timed(lambda: notifier.send(notice=NOTICE))
    assert isinstance(error, fencing.Cancelled) and "timeout passed" in str(error)
    assert took <= 0.5 + MARGIN, took

"""The JSON webhook notifier (also the SMS gateway's) against a real local HTTP server:
the payload, the bearer token, bounded retries of transient answers, no retry of a
permanent one, and a final failure that raises with every secret redacted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from controller.drill.servers.webhook import WebhookServer
from controller.model import Notice
from controller.notify.common import NotifyError
from tests.contract.notify.conftest import (
    BEARER,
    SECRETS,
    URL_TOKEN,
    build,
    hook_path,
    webhook_options,
)

PATH = hook_path("sms")
NOTICE = Notice(plan="notify-drill", level=1, subject="[notify-drill] level 1 failover",
                status="failover started: tripped", affected=("web", "api", "hotline"),
                estimated_recovery="by 2023-11-14 23:13 UTC (in 1h 59m; 4 steps left)",
                run_id="notify-drill-failover-1", recipients=("broadcast",),
                link="https://failover.example.test/runs/notify-drill-failover-1",
                at=1_700_000_000.0)

SecretFile = Callable[[str], dict[str, str]]


def test_posts_the_notice_as_json_with_the_bearer_token(hooks: WebhookServer,
                                                        secret_file: SecretFile) -> None:
    build("webhook", webhook_options(hooks.url(PATH), secret_file)).send(notice=NOTICE)
    [request] = hooks.requests(PATH)
    assert request.method == "POST" and request.status == 200
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {BEARER}"
    doc = request.json()
    assert doc["type"] == "failover.notice" and doc["version"] == 1
    assert {k: doc[k] for k in ("plan", "level", "subject", "status", "affected",
                                "estimatedRecovery", "run", "recipients", "at")} == {
        "plan": "notify-drill", "level": 1, "subject": NOTICE.subject,
        "status": "failover started: tripped", "affected": ["web", "api", "hotline"],
        "estimatedRecovery": NOTICE.estimated_recovery,
        "run": {"id": "notify-drill-failover-1", "link": NOTICE.link},
        "recipients": ["broadcast"], "at": 1_700_000_000.0}
    assert doc["time"] == "2023-11-14 22:13 UTC"
    # what an SMS gateway forwards: one GSM-7 message of at most 160 characters, run first
    assert doc["message"].startswith("notify-drill-failover-1 L1 notify-drill: failover "
                                     "started: tripped. Down: web")
    assert len(doc["message"]) <= 160


def test_the_sms_text_is_one_gsm7_part_with_the_run_id_first(
        hooks: WebhookServer, secret_file: SecretFile) -> None:
    hostile = replace(NOTICE, status="failover FAILED: \u00abns1\u00bb refused \u2014 "
                                     "retry\u2026\n" + "x" * 300)
    build("webhook", webhook_options(hooks.url(PATH), secret_file)).send(notice=hostile)
    [doc] = hooks.received(PATH)
    assert doc["message"].startswith('notify-drill-failover-1 L1 notify-drill: failover '
                                     'FAILED: "ns1" refused - retry... xxx')
    assert len(doc["message"]) == 160 and doc["message"].endswith("...")
    assert doc["message"].isascii()  # here: every character one GSM-7 septet
    assert doc["status"] == hostile.status  # the full text is still in the document


@pytest.mark.parametrize("transient", [500, 502, 503, 429, 408])
def test_a_transient_answer_is_retried_then_delivered_once(
        hooks: WebhookServer, secret_file: SecretFile, transient: int) -> None:
    hooks.respond(PATH, [transient, 200])
    build("webhook", webhook_options(hooks.url(PATH), secret_file)).send(notice=NOTICE)
    assert [r.status for r in hooks.requests(PATH)] == [transient, 200]
    assert len(hooks.received(PATH)) == 1


def test_retries_are_bounded_and_the_final_failure_raises_redacted(
        hooks: WebhookServer, secret_file: SecretFile,
        caplog: pytest.LogCaptureFixture) -> None:
    hooks.respond(PATH, [500] * 10)
    notifier = build("webhook", webhook_options(hooks.url(PATH), secret_file, attempts=3))
    with pytest.raises(NotifyError) as err:
        notifier.send(notice=NOTICE)
    assert len(hooks.requests(PATH)) == 3  # exactly `attempts`, then it gives up
    assert str(err.value) == (f"webhook http://127.0.0.1:{hooks.port} answered HTTP 500 "
                              "(after 3 attempts)")
    assert "attempt 2 failed" in caplog.text  # each retry is logged...
    for secret in SECRETS:  # ...and nothing secret is in the error or the log
        assert secret not in str(err.value) and secret not in caplog.text
    assert URL_TOKEN not in repr(notifier)


def test_the_deadline_bounds_the_attempts(hooks: WebhookServer,
                                          secret_file: SecretFile) -> None:
    hooks.respond(PATH, [503] * 50)
    notifier = build("webhook", webhook_options(hooks.url(PATH), secret_file, attempts=10,
                                                backoff="50ms", deadline="200ms"))
    with pytest.raises(NotifyError, match="answered HTTP 503"):
        notifier.send(notice=NOTICE)
    assert len(hooks.requests(PATH)) < 10  # stopped by the deadline, not by `attempts`


@pytest.mark.parametrize("permanent", [400, 401, 403, 404, 410])
def test_a_permanent_answer_is_not_retried(hooks: WebhookServer, secret_file: SecretFile,
                                           permanent: int) -> None:
    hooks.respond(PATH, [permanent])
    notifier = build("webhook", webhook_options(hooks.url(PATH), secret_file))
    with pytest.raises(NotifyError, match=f"HTTP {permanent}; not retried") as err:
        notifier.send(notice=NOTICE)
    assert len(hooks.requests(PATH)) == 1
    assert URL_TOKEN not in str(err.value)


def test_an_unreachable_gateway_is_retried_then_named_without_its_path(
        secret_file: SecretFile) -> None:
    from tests.contract.notify.conftest import closed_port

    port = closed_port()
    notifier = build("webhook", webhook_options(f"http://127.0.0.1:{port}{PATH}", secret_file))
    with pytest.raises(NotifyError) as err:
        notifier.send(notice=NOTICE)
    message = str(err.value)
    assert message.startswith(f"webhook http://127.0.0.1:{port} unreachable: ")
    assert message.endswith("(after 3 attempts)") and URL_TOKEN not in message


def test_a_missing_url_secret_names_where_it_was_looked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_TEST_NO_SUCH_URL", raising=False)
    with pytest.raises(NotifyError, match="environment variable NOTIFY_TEST_NO_SUCH_URL "
                                          "is not set"):
        build("webhook", {"url": {"fromEnv": "NOTIFY_TEST_NO_SUCH_URL"}})


def test_a_url_that_is_not_http_is_refused_without_showing_it(secret_file: SecretFile) -> None:
    with pytest.raises(NotifyError, match="is not an http") as err:
        build("webhook", {"url": secret_file(f"ftp://relay.example.test/{URL_TOKEN}")})
    assert URL_TOKEN not in str(err.value)

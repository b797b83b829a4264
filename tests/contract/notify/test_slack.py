"""The Slack-compatible notifier against a real local HTTP server: the `text` + `blocks`
message with mentions, retries bounded on 500 then 200, Slack's own error answers not
retried, and the token in the webhook URL never shown."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.drill.servers.webhook import WebhookServer
from controller.model import Notice
from controller.notify.common import NotifyError
from tests.contract.notify.conftest import URL_TOKEN, build, hook_path, slack_options

PATH = f"/services/T0001/B0001/{URL_TOKEN}"
NOTICE = Notice(plan="notify-drill", level=2, subject="[notify-drill] level 2 failover",
                status="step dns-cutover succeeded 3m after detection (target 2h met)",
                affected=("web", "hotline"), estimated_recovery="by 2023-11-14 23:13 UTC",
                run_id="notify-drill-failover-2", recipients=("department-heads", "@here"),
                link="https://failover.example.test/runs/notify-drill-failover-2",
                at=1_700_000_000.0)

SecretFile = Callable[[str], dict[str, str]]


def test_posts_text_and_blocks_with_mentions(hooks: WebhookServer,
                                             secret_file: SecretFile) -> None:
    options = slack_options(hooks.url(PATH), secret_file,
                            mentions={"department-heads": "<!subteam^S0DEPTHEADS>"})
    build("slack", options).send(notice=NOTICE)
    [request] = hooks.requests(PATH)
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers  # the URL is the credential
    body = request.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("<!subteam^S0DEPTHEADS> <!here> L2 notify-drill: step "
                                   "dns-cutover succeeded")
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section", "context"]
    assert body["blocks"][0]["text"] == {"type": "plain_text", "text": NOTICE.subject}
    fields = [f["text"] for f in body["blocks"][2]["fields"]]
    assert fields[1] == "*Affected services*\nweb, hotline"
    assert fields[3] == f"*Run*\n<{NOTICE.link}|notify-drill-failover-2>"


def test_500_then_200_is_retried_and_delivered_once(hooks: WebhookServer,
                                                    secret_file: SecretFile) -> None:
    hooks.respond(PATH, [500, 200])
    build("slack", slack_options(hooks.url(PATH), secret_file)).send(notice=NOTICE)
    assert [r.status for r in hooks.requests(PATH)] == [500, 200]
    assert len(hooks.received(PATH)) == 1


def test_final_failure_raises_with_the_token_redacted(hooks: WebhookServer,
                                                      secret_file: SecretFile,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hooks.respond(PATH, [503, 503, 503, 503])
    notifier = build("slack", slack_options(hooks.url(PATH), secret_file, attempts=4))
    with pytest.raises(NotifyError) as err:
        notifier.send(notice=NOTICE)
    assert len(hooks.requests(PATH)) == 4
    assert str(err.value) == (f"slack http://127.0.0.1:{hooks.port} answered HTTP 503 "
                              "(after 4 attempts)")
    assert URL_TOKEN not in caplog.text and URL_TOKEN not in str(err.value)


def test_a_revoked_webhook_is_not_retried(hooks: WebhookServer,
                                          secret_file: SecretFile) -> None:
    hooks.respond(PATH, [404])  # Slack answers 404 no_service for a revoked URL
    with pytest.raises(NotifyError, match="HTTP 404; not retried"):
        build("slack", slack_options(hooks.url(PATH), secret_file)).send(notice=NOTICE)
    assert len(hooks.requests(PATH)) == 1


def test_each_webhook_path_is_its_own_channel(hooks: WebhookServer,
                                              secret_file: SecretFile) -> None:
    other = hook_path("other")
    build("slack", slack_options(hooks.url(PATH), secret_file)).send(notice=NOTICE)
    assert len(hooks.received(PATH)) == 1 and hooks.received(other) == []

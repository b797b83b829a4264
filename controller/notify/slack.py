"""Slack-compatible incoming-webhook notifier (Slack, Mattermost, Rocket.Chat...).

Owns the chat rendering of a notice: a `text` fallback (what a phone notification or a
screen reader shows: mentions plus the one-line summary) and `blocks` carrying the same
incident-report template as every other channel (status, level, affected services,
estimated recovery, run id and link, recipients). Recipients become mentions: `@all` /
`@channel` -> `<!channel>`, `@here` -> `<!here>`, anything in `mentions` (e.g. a user
group for the department heads) as given, others as plain text. The webhook URL *is* the
credential (its path holds the token), so it comes from a secret and errors name only
the host.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controller.model import Notice
from controller.notify import Notifier
from controller.notify.common import (
    DeliveryOptions,
    affected_text,
    deliver,
    post_json,
    reveal_url,
    summary,
)
from controller.secrets import SecretRef, Secrets

MENTIONS = {"@all": "<!channel>", "@channel": "<!channel>", "@here": "<!here>",
            "@everyone": "<!everyone>"}


class SlackOptions(DeliveryOptions):
    url: SecretRef = Field(description="the incoming-webhook URL; a secret (it holds the token)")
    mentions: dict[str, str] = Field(
        default_factory=dict,
        description="recipient -> Slack mention, e.g. {department-heads: '<!subteam^S0123>'}")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention(recipient: str, extra: dict[str, str]) -> str:
    if recipient in extra:
        return extra[recipient]
    if recipient in MENTIONS:
        return MENTIONS[recipient]
    return _escape(recipient)


def payload(notice: Notice, mentions: dict[str, str] | None = None) -> dict[str, Any]:
    """The Slack message for a notice: `text` fallback plus `blocks`."""
    to = [mention(r, mentions or {}) for r in notice.recipients]
    run = _escape(notice.run_id or "-")
    if notice.link:
        run = f"<{notice.link}|{run}>"
    level = str(notice.level) if notice.level is not None else "-"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": notice.subject[:150]}},
        {"type": "section",
         "text": {"type": "mrkdwn", "text": f"*Status:* {_escape(notice.status)}"[:3000]}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Level*\n{level}"},
            {"type": "mrkdwn", "text": f"*Affected services*\n{_escape(affected_text(notice))}"},
            {"type": "mrkdwn", "text": "*Estimated recovery*\n"
                                       f"{_escape(notice.estimated_recovery or 'unknown')}"},
            {"type": "mrkdwn", "text": f"*Run*\n{run}"},
        ]},
    ]
    if to:
        blocks.append({"type": "context",
                       "elements": [{"type": "mrkdwn", "text": "To: " + " ".join(to)}]})
    text = " ".join([*to, _escape(summary(notice, limit=400))])
    return {"text": text, "blocks": blocks}


class SlackNotifier(Notifier):
    """`send(notice=...)` posts the message to the incoming webhook, retried."""

    Options = SlackOptions

    def __init__(self, options: SlackOptions, *, secrets: Any = None):
        self.options = options
        self._url, self.where = reveal_url(secrets or Secrets(), options.url, kind="slack")

    def __repr__(self) -> str:
        return f"SlackNotifier({self.where})"

    def send(self, *, notice: Notice) -> None:
        body = payload(notice, self.options.mentions)
        deliver(lambda attempt: post_json(self._url, body, attempt=attempt, where=self.where),
                self.options, where=self.where)

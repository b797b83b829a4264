"""Generic JSON webhook notifier: one POST per notice, also the way to an SMS gateway.

Owns delivery to any HTTP endpoint that takes JSON: the body is the incident-report
template as a document (`common.document`: plan, level, status, subject, affected
services, estimated recovery, run id and link, recipients, time), with a one-SMS
`message` field so an SMS gateway (or a small relay in front of one) can forward it as
is. The URL and the optional bearer token come from secrets (`fromFile`, `fromEnv`,
`fromSecret`) because webhook URLs often carry a token; neither reaches a log line, an
exception or the audit: errors name only `scheme://host:port`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from controller.model import Notice
from controller.notify import Notifier
from controller.notify.common import (
    DeliveryOptions,
    NotifyError,
    deliver,
    document,
    post_json,
    reveal_url,
)
from controller.secrets import SecretError, SecretRef, Secrets


class WebhookOptions(DeliveryOptions):
    url: SecretRef = Field(description="where to POST; a secret: URLs often carry a token")
    token: SecretRef | None = Field(None, description="sent as `Authorization: Bearer`")


class WebhookNotifier(Notifier):
    """`send(notice=...)` POSTs the notice as JSON, retried within the deadline."""

    Options = WebhookOptions

    def __init__(self, options: WebhookOptions, *, secrets: Any = None):
        self.options = options
        secrets = secrets or Secrets()
        self._url, self.where = reveal_url(secrets, options.url, kind="webhook")
        self._headers: dict[str, str] = {}
        if options.token is not None:
            try:
                token = secrets.reveal(options.token).strip()
            except SecretError as exc:
                raise NotifyError(f"{self.where}: {exc}") from None
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"WebhookNotifier({self.where})"

    def send(self, *, notice: Notice) -> None:
        body = document(notice)
        deliver(lambda attempt: post_json(self._url, body, attempt=attempt, where=self.where,
                                          headers=self._headers), self.options, where=self.where)

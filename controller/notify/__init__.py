"""Notifications: the `Notifier` protocol and the lazy registry of notifier kinds.

One module per backend: `webhook` (generic JSON, also for SMS gateways), `slack`
(Slack-compatible incoming webhooks), `smtp` (e-mail); `common` holds the
incident-report template and the bounded retries they share. `send` retries within its
deadline, which holds as a whole, and raises `NotifyError` (secret-free) on final
failure. The engine's notices never wait on a notifier: it records each one in the
journal and hands it to `outbox`, whose threads send it and audit `notify` or
`notify-failed`: a slow or failed notification never blocks a failover.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from controller.model import Notice

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeNotifier",
    "webhook": "controller.notify.webhook:WebhookNotifier",
    "slack": "controller.notify.slack:SlackNotifier",
    "smtp": "controller.notify.smtp:SmtpNotifier",
}


@runtime_checkable
class Notifier(Protocol):
    def send(self, *, notice: Notice) -> None:
        """Deliver `notice` within the notifier's deadline, or raise `NotifyError`."""
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None

"""Notifications: the `Notifier` protocol and the lazy registry of notifier kinds.

`send` never raises: a failed notification is logged and recorded, and never blocks a step.
"""

from __future__ import annotations

from typing import Protocol

from controller.model import Notice

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeNotifier",
}


class Notifier(Protocol):
    def send(self, *, notice: Notice) -> None: ...

"""The `Notifier` contract, run through the same tests for the in-memory fake, the JSON
webhook, the Slack webhook and SMTP e-mail against their real receivers: a notice
arrives once with every field of the incident-report template; notices arrive in order;
text survives whatever the channel's markup; a dead destination raises a secret-free
`NotifyError` and delivers nothing; unknown options are refused."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller import registry
from controller.model import Notice
from controller.notify.common import NotifyError
from tests.contract.notify.conftest import KINDS, SECRETS, Channel

FIELDS = ("subject", "status", "level", "affected", "estimatedRecovery", "run", "link",
          "recipients")


def notice(status: str = "step redirect-traffic succeeded 4m 2s after detection "
                         "(target 1h met)", **changes: Any) -> Notice:
    values: dict[str, Any] = {
        "plan": "notify-drill", "level": 3, "subject": "[notify-drill] level 3 failover",
        "status": status, "affected": ("web", "hotline"),
        "estimated_recovery": "by 2023-11-14 23:13 UTC (in 1h 58m; 3 steps left)",
        "run_id": "notify-drill-failover-20231114-221300",
        "recipients": ("shift-lead@example.test",),
        "link": "https://failover.example.test/runs/notify-drill-failover-20231114-221300",
        "at": 1_700_000_000.0, **changes}
    return Notice(**values)


def expected(n: Notice) -> dict[str, Any]:
    return {"subject": n.subject, "status": n.status, "level": n.level,
            "affected": list(n.affected), "estimatedRecovery": n.estimated_recovery,
            "run": n.run_id, "link": n.link, "recipients": list(n.recipients)}


def view(got: dict[str, Any]) -> dict[str, Any]:
    return {k: got[k] for k in FIELDS}


def test_a_notice_arrives_once_with_every_template_field(channel: Channel) -> None:
    n = notice()
    assert channel.notifier.send(notice=n) is None
    assert [view(g) for g in channel.received()] == [expected(n)]


def test_notices_arrive_in_order_each_once(channel: Channel) -> None:
    sent = [notice("failover started: tripped"),
            notice("step notify-incident succeeded 1s after detection (target 10m met)"),
            notice("failover complete: all steps succeeded; active site dc-b",
                   affected=(), estimated_recovery="recovered: the failover finished at "
                                                   "2023-11-14 22:15 UTC")]
    for n in sent:
        channel.notifier.send(notice=n)
    assert [view(g) for g in channel.received()] == [expected(n) for n in sent]


def test_text_survives_the_channel_markup(channel: Channel) -> None:
    n = notice("availability 0 % < 70 % & rising; «hotline» down \u2014 <!here> *not bold*",
               level=None, link="", affected=())
    channel.notifier.send(notice=n)
    assert [view(g) for g in channel.received()] == [expected(n)]


def test_a_dead_destination_raises_a_secret_free_error_and_delivers_nothing(
        channel: Channel, caplog: pytest.LogCaptureFixture) -> None:
    dead = channel.dead()
    with pytest.raises(NotifyError) as err:
        dead.send(notice=notice())
    text = str(err.value) + caplog.text
    for secret in SECRETS:
        assert secret not in text
    assert "attempt" in str(err.value)  # says how hard it tried
    assert channel.received() == []


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_options_are_refused(kind: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        registry.parse_options("notifier", kind, {"recipient": "x"})

"""Notification by response level, end to end, checked on what real servers received.

The shipped example `manifests/examples/notifications.yaml` runs on the engine's public
path (samples in, `tick`, FakeClock) with its real notifiers pointed at a real local
HTTP server (the IM webhook, Slack-compatible, and the SMS gateway webhook) and a real
SMTP server (STARTTLS + login). Level 1, 2 and 3 incidents reach exactly their routes,
with every update (start, each step, end) carrying the template's fields; a controller
restarted in the middle of a run sends no notice twice; dead notifiers neither block nor
fail the failover and show in the audit, with no secret anywhere.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import notices, testing
from controller.backends import Backends
from controller.drill.servers.mail import Mail, MailServer
from controller.drill.servers.webhook import WebhookServer
from controller.journal import Journal, PlanState, Run
from controller.loop import Clock, Engine
from controller.model import Phase, Sample, StepRecord, StepStatus
from controller.plan import FailoverPlan, parse_plan
from tests.contract.notify.conftest import closed_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests/examples/notifications.yaml"
SERVICES = ("web", "api", "hotline")
IM_TOKEN = "xoxb-im-T0K3N-e2e-91f2"
SMS_TOKEN = "sms-bearer-5ecr3t-e2e-77"
SMTP_PASSWORD = "mail-pa55-e2e-2b9d"
SECRETS = (IM_TOKEN, SMS_TOKEN, SMTP_PASSWORD)
IM_PATH = f"/services/T0/B0/{IM_TOKEN}"
SMS_PATH = "/sms/v1/broadcast"
FAST = {"attempts": 3, "backoff": "10ms", "timeout": "5s", "deadline": "20s"}
GROUPS = "#incident-tech"  # the notify-incident step's push, sent at every level


@dataclass
class Servers:
    hooks: WebhookServer
    mail: MailServer

    def im(self) -> list[dict[str, Any]]:
        return self.hooks.received(IM_PATH)

    def sms(self) -> list[dict[str, Any]]:
        return self.hooks.received(SMS_PATH)

    def mails(self) -> list[Mail]:
        return self.mail.messages()


@pytest.fixture
def servers() -> Iterator[Servers]:
    with WebhookServer() as hooks, \
            MailServer(starttls=True, users={"failover": SMTP_PASSWORD}) as mail:
        yield Servers(hooks, mail)


def example_plan(servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                 dead: frozenset[str] = frozenset(), gate: str | None = None) -> FailoverPlan:
    """The shipped example, its notifiers pointed at the local servers (or, for `dead`
    ones, at a port nothing listens on); secrets in the environment and a file."""
    data = yaml.safe_load(EXAMPLE.read_text())
    base = {name: servers.hooks.endpoint for name in ("im", "sms")}
    for name in dead:
        base[name] = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("FAILOVER_IM_WEBHOOK_URL", base["im"] + IM_PATH)
    monkeypatch.setenv("FAILOVER_SMS_GATEWAY_URL", base["sms"] + SMS_PATH)
    monkeypatch.setenv("FAILOVER_SMS_GATEWAY_TOKEN", SMS_TOKEN)
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    for backend in data["spec"]["backends"]:
        if backend["role"] == "notifier":
            backend["options"].update(FAST)
        if backend["name"] == "mail":
            backend["options"].update(
                host=servers.mail.host,
                port=closed_port() if "mail" in dead else servers.mail.port,
                caFile=str(servers.mail.ca_file), password={"fromFile": str(password)})
    for step in data["spec"]["steps"]:
        if step["name"] == gate:
            step["approval"] = True
    return parse_plan(data)


class Incident:
    """An engine on a FakeClock, fed probe samples, like a controller process."""

    def __init__(self, plan: FailoverPlan, journal: Journal, *, holder: str = "ctl-1",
                 clock: testing.FakeClock | None = None):
        self.plan, self.journal = plan, journal
        self.clock = clock or testing.FakeClock()
        self.engine = Engine(plan, journal, backends=Backends(plan), holder=holder,
                             clock=Clock(now=self.clock.now, sleep=self.clock.sleep),
                             backoff=0.01)

    def outage(self, down: set[str]) -> PlanState:
        testing.set_health("dc-a", False)  # the primary site is down for the link test too
        state = self.engine.state()
        for _ in range(12):
            self.clock.advance(0.2)
            now = self.clock.now()
            state = self.engine.tick([Sample(s, s not in down, now,
                                             detail="HTTP 503" if s in down else "")
                                      for s in SERVICES])
            if state.phase not in (Phase.HEALTHY, Phase.DEGRADED):
                break
        return state

    def run(self) -> Run:
        return self.journal.runs(self.plan.name, limit=1)[0]


def updates(journal: Journal, run: Run) -> list[str]:
    """Every status the run should have announced, in order: start, each step, end."""
    final = journal.run(run.id)
    assert final is not None
    steps = [notices.step_status(s) for s in journal.steps(run.id)]
    return [f"failover started: {run.reason}", *steps,
            f"failover complete: {final.outcome}; active site dc-b"]


def slack_fields(message: dict[str, Any]) -> dict[str, str]:
    facts = message["blocks"][2]["fields"]
    view = {f["text"].split("\n", 1)[0].strip("*"): html.unescape(f["text"].split("\n", 1)[1])
            for f in facts}
    view["status"] = html.unescape(message["blocks"][1]["text"]["text"].removeprefix(
        "*Status:* "))
    view["to"] = message["blocks"][3]["elements"][0]["text"] if len(
        message["blocks"]) > 3 else ""
    return view


def mail_fields(m: Mail) -> dict[str, str]:
    lines = [line.split(":", 1) for line in m.text.splitlines()[1:] if ":" in line]
    return {k.strip(): v.strip() for k, v in lines}


@pytest.mark.parametrize(("level", "down"), [
    (1, {"web", "api", "hotline"}),  # every channel down at once
    (2, {"web", "hotline"}),         # 67 % of the service unavailable
    (3, {"web"}),                    # one channel down
])
def test_each_level_reaches_exactly_its_routes_with_every_update(
        servers: Servers, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, level: int, down: set[str]) -> None:
    incident = Incident(example_plan(servers, tmp_path, monkeypatch), journal)
    assert incident.outage(down).phase is Phase.FAILED_OVER
    run = incident.run()
    assert run.level == level
    expected = updates(journal, run)
    assert len(expected) == 6  # start, four steps, complete
    link = f"https://failover.example.test/runs/{run.id}"
    affected = ", ".join(s for s in SERVICES if s in down)

    # the notify-incident step pushes to the technical and communication groups, any level
    push = [m for m in servers.im() if GROUPS in m["text"]]
    assert len(push) == 1 and "#incident-comms" in push[0]["text"]
    routed_im = [m for m in servers.im() if GROUPS not in m["text"]]

    if level == 1:  # IM to everyone and an SMS broadcast; no e-mail
        assert [slack_fields(m)["status"] for m in routed_im] == expected
        assert all(m["text"].startswith("<!channel> L1 notify-drill: ") for m in routed_im)
        sms = servers.sms()
        assert [d["status"] for d in sms] == expected
        assert servers.hooks.requests(SMS_PATH)[0].headers["Authorization"] == (
            f"Bearer {SMS_TOKEN}")
        for doc in sms:
            assert doc["recipients"] == ["broadcast"] and doc["level"] == 1
            assert doc["run"] == {"id": run.id, "link": link}
            assert doc["affected"] == ["web", "api", "hotline"]
            assert len(doc["message"]) <= 160
        estimates = [d["estimatedRecovery"] for d in sms]
        assert servers.mails() == []
    elif level == 2:  # IM to the department heads only
        views = [slack_fields(m) for m in routed_im]
        assert [v["status"] for v in views] == expected
        assert all(v["to"] == "To: <!subteam^S0DEPTHEADS>" for v in views)
        assert all(v["Level"] == "2" and v["Affected services"] == affected for v in views)
        assert all(v["Run"] == f"<{link}|{run.id}>" for v in views)
        estimates = [v["Estimated recovery"] for v in views]
        assert servers.sms() == [] and servers.mails() == []
    else:  # e-mail to the shift lead, within 30 min; no IM broadcast, no SMS
        mails = servers.mails()
        assert [mail_fields(m)["Status"] for m in mails] == expected
        for m in mails:
            assert m.rcpt_tos == ("shift-lead@example.test",) and m.tls
            assert m.login == "failover"
            assert m.subject.startswith("[notify-drill] level 3 failover: ")
            fields = mail_fields(m)
            assert fields["Affected services"] == affected
            assert fields["Run"] == f"{run.id} ({link})"
        estimates = [mail_fields(m)["Estimated recovery"] for m in mails]
        assert routed_im == [] and servers.sms() == []
        sent = [a["detail"] for a in journal.audit_trail(run_id=run.id)
                if a["action"] == "notify"]
        assert len(sent) == 6
        assert all("(within 30m of detection: met)" in d for d in sent)

    # the estimate: due by the last remaining target (2 h from detection), then recovered
    assert estimates[0] == notices.estimate_recovery(
        _pending(journal, run), detected_at=run.detected_at,
        now=run.started_at).text(run.started_at)
    assert estimates[0].startswith(f"by {notices.clock(run.detected_at + 7200)} (in 1h 59m")
    assert "4 steps left" in estimates[0] and "1 step left" in estimates[3]
    assert estimates[-1].startswith("recovered: the failover finished at ")


def _pending(journal: Journal, run: Run) -> list[StepRecord]:
    """The run's steps as they were at its start: all pending, with their targets."""
    return [StepRecord(run_id=s.run_id, index=s.index, name=s.name, action=s.action,
                       target_s=s.target_s) for s in journal.steps(run.id)]


def test_a_restarted_controller_sends_no_notice_twice(
        servers: Servers, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = example_plan(servers, tmp_path, monkeypatch, gate="dns-cutover")
    first = Incident(plan, journal)
    assert first.outage(set(SERVICES)).phase is Phase.AWAITING_APPROVAL
    run = first.run()
    before_im, before_sms = servers.im(), servers.sms()
    assert [d["status"] for d in before_sms] == updates(journal, run)[:3]  # start + 2 steps

    # the controller dies; a new process takes over once the lease expired and walks the
    # run again: every finished step is announced already, so nothing is sent again
    first.clock.advance(60)
    second = Incident(plan, Journal(journal.path), holder="ctl-2", clock=first.clock)
    assert second.engine.reconcile().phase is Phase.AWAITING_APPROVAL
    second.engine.reconcile()
    assert servers.im() == before_im and servers.sms() == before_sms

    second.engine.approve(run.id, actor="oncall", step="dns-cutover")
    assert second.engine.reconcile().phase is Phase.FAILED_OVER
    expected = updates(journal, run)
    sms = [d["status"] for d in servers.sms()]
    assert sms == expected  # each update exactly once, in order
    routed_im = [slack_fields(m)["status"] for m in servers.im() if GROUPS not in m["text"]]
    assert routed_im == expected
    assert len([m for m in servers.im() if GROUPS in m["text"]]) == 1
    tags = [a["detail"].rsplit(" ", 2)[-2:] for a in journal.audit_trail(run_id=run.id)
            if a["action"] == "notify"]
    assert len(tags) == len({tuple(t) for t in tags}) == 2 * len(expected)


@pytest.mark.parametrize("dead", [frozenset({"sms"}), frozenset({"im", "sms"})],
                         ids=["sms-gateway-down", "every-notifier-down"])
def test_dead_notifiers_neither_block_nor_fail_the_failover(
        servers: Servers, journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, dead: frozenset[str]) -> None:
    incident = Incident(example_plan(servers, tmp_path, monkeypatch, dead=dead), journal)
    assert incident.outage(set(SERVICES)).phase is Phase.FAILED_OVER
    run = incident.run()
    steps = {s.name: s for s in journal.steps(run.id)}
    for name in ("redirect-traffic", "dns-cutover", "link-test"):
        assert steps[name].status is StepStatus.SUCCEEDED and steps[name].met is True
    trail = journal.audit_trail(run_id=run.id)
    failed = [a["detail"] for a in trail if a["action"] == "notify-failed"]
    expected = updates(journal, run)
    assert len([d for d in failed if d.startswith("sms -> broadcast failed: ")]) == len(expected)
    assert all("unreachable" in d and "(after 3 attempts)" in d for d in failed)
    assert servers.sms() == []
    if "im" in dead:
        # the incident push itself failed: the step says so, and the run went on
        assert steps["notify-incident"].status is StepStatus.FAILED
        assert "unreachable" in (steps["notify-incident"].error or "")
        assert len([d for d in failed if d.startswith("im -> @all failed: ")]) == len(expected)
        assert servers.im() == []
    else:
        assert steps["notify-incident"].status is StepStatus.SUCCEEDED
        routed = [slack_fields(m)["status"] for m in servers.im() if GROUPS not in m["text"]]
        assert routed == expected
    for secret in SECRETS:  # not in the audit, the step records, the run, or the logs
        everything = " ".join([str(trail), str([s.to_json() for s in steps.values()]),
                               str(journal.run(run.id)), caplog.text])
        assert secret not in everything

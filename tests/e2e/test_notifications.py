"""Notification by response level, end to end, checked on what real servers received.

The shipped example `manifests/examples/notifications.yaml` runs on the engine's public
path (samples in, `tick`, FakeClock) with its real notifiers pointed at a real local
HTTP server (the IM webhook, Slack-compatible, and the SMS gateway webhook) and a real
SMTP server (STARTTLS + login). Level 1, 2 and 3 incidents reach exactly their routes,
with every update (start, each step, end) carrying the template's fields; a controller
restarted in the middle of a run sends no notice twice; dead notifiers neither block nor
fail the failover and show in the audit, with no secret anywhere.

Notices never block or vanish: an SMS gateway answering one byte a second holds no step
(the first step starts at once, the failover finishes while the notice still drips) and
is given up at its deadline; a `failoverctl` process killed while its notices were still
going out leaves them to the next one, which sends each exactly once; a FAILED run and
statuses spanning several lines are e-mailed (one-line subject, full text in the body).
"""

from __future__ import annotations

import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
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
from controller.model import TERMINAL, Phase, Sample, StepRecord, StepStatus
from controller.notify.smtp import SUBJECT_LENGTH, header
from controller.plan import FailoverPlan, parse_plan
from tests.contract.notify.conftest import HTTP_OK, DripServer, closed_port

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
                 dead: frozenset[str] = frozenset(), gate: str | None = None,
                 sms_gateway: str | None = None, options: dict[str, Any] | None = None,
                 dns_fails: bool = False, shared: bool = False) -> FailoverPlan:
    """The shipped example, its notifiers pointed at the local servers (or, for `dead`
    ones, at a port nothing listens on; the SMS gateway at `sms_gateway` if given);
    secrets in the environment and a file. `options` are added to every notifier's;
    `dns_fails` makes the DNS cutover fail (the run ends FAILED); `shared` also writes
    it to `tmp_path/plan.yaml` with its fakes' state in a file, for `failoverctl`."""
    data = yaml.safe_load(EXAMPLE.read_text())
    base = {name: servers.hooks.endpoint for name in ("im", "sms")}
    if sms_gateway:
        base["sms"] = sms_gateway
    for name in dead:
        base[name] = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("FAILOVER_IM_WEBHOOK_URL", base["im"] + IM_PATH)
    monkeypatch.setenv("FAILOVER_SMS_GATEWAY_URL", base["sms"] + SMS_PATH)
    monkeypatch.setenv("FAILOVER_SMS_GATEWAY_TOKEN", SMS_TOKEN)
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    for backend in data["spec"]["backends"]:
        if backend["role"] == "notifier":
            backend["options"].update(FAST, **(options or {}))
        if backend["name"] == "zone" and dns_fails:
            backend["options"]["fail"] = True
        if backend["name"] == "mail":
            backend["options"].update(
                host=servers.mail.host,
                port=closed_port() if "mail" in dead else servers.mail.port,
                caFile=str(servers.mail.ca_file), password={"fromFile": str(password)})
    for step in data["spec"]["steps"]:
        if step["name"] == gate:
            step["approval"] = True
    if shared:  # the fakes' state in a file, so several processes share it; a plan file
        state = str(tmp_path / "world.json")
        for backend in data["spec"]["backends"]:
            if backend["kind"] == "memory":
                backend["options"]["stateFile"] = state
        for service in data["spec"]["services"]:
            for probe in service["probes"]:
                probe["options"]["stateFile"] = state
        data["spec"]["coordination"] = {"kind": "host",
                                        "options": {"lockDir": str(tmp_path / "locks")}}
        (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data))
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
        self.sent()
        return state

    def reconcile(self) -> PlanState:
        state = self.engine.reconcile()
        self.sent()
        return state

    def sent(self) -> None:
        """Wait until the notices decided so far were delivered (or given up): they go
        out off the step path, on the outbox's threads."""
        assert self.engine.flush_notices(timeout=30), "notices still queued after 30 s"

    def run(self) -> Run:
        return self.journal.runs(self.plan.name, limit=1)[0]


def updates(journal: Journal, run: Run) -> list[str]:
    """Every status the run should have announced, in order: start, each finished step
    (the example's human steps stay open unless someone says done), end."""
    final = journal.run(run.id)
    assert final is not None
    steps = [notices.step_status(s) for s in journal.steps(run.id) if s.status in TERMINAL]
    asked = f"requested by {run.requested_by}: " if run.requested_by != "controller" else ""
    return [f"failover started: {asked}{run.reason}", *steps,
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
    # the human steps (acknowledge, root-cause) stay open: nobody said done in this test
    assert "6 steps left" in estimates[0] and "3 steps left" in estimates[3]
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
    assert second.reconcile().phase is Phase.AWAITING_APPROVAL
    second.reconcile()
    assert servers.im() == before_im and servers.sms() == before_sms

    second.engine.approve(run.id, actor="oncall", step="dns-cutover")
    assert second.reconcile().phase is Phase.FAILED_OVER
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


# --- notices never block or vanish -----------------------------------------------------------


def test_a_dripping_sms_gateway_holds_no_step_and_is_given_up_at_its_deadline(
        servers: Servers, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the gateway drips its answer to the first notice (the start), then answers at once
    with DripServer(HTTP_OK, slow=1) as drip:
        plan = example_plan(servers, tmp_path, monkeypatch,
                            sms_gateway=f"http://127.0.0.1:{drip.port}",
                            options={"timeout": "5s", "deadline": "4s"})
        engine = Engine(plan, journal, backends=Backends(plan), holder="ctl-1",
                        backoff=0.01)  # the real clock: the times below are real
        testing.set_health("dc-a", False)
        engine.request("failover", actor="oncall", reason="drill", level=1)
        began = time.monotonic()
        assert engine.reconcile().phase is Phase.FAILED_OVER
        took = time.monotonic() - began
        run = journal.runs(plan.name, limit=1)[0]
        first = journal.steps(run.id)[2]  # the first automatic step (notify-incident)
        assert first.started_at is not None
        assert first.started_at - run.started_at < 0.5  # the first step started at once
        assert took < 4.0  # the whole failover ran while the start notice still dripped
        assert len(drip.connections) == 1 and drip.connections[0].closed is None
        assert engine.flush_notices(timeout=60)
        later = [json.loads(c.request.split(b"\r\n\r\n", 1)[1])
                 for c in drip.connections[1:]]

    trail = journal.audit_trail(run_id=run.id)
    decided = [(notices.parse_pending(a["detail"]), a["at"]) for a in trail
               if a["action"] == notices.PENDING]
    start = notices.started(run)
    [sms_start] = [at for parsed, at in decided
                   if parsed is not None and parsed[0] == "sms -> broadcast"
                   and parsed[2] == start]
    [(failed_at, failed)] = [(a["at"], a["detail"]) for a in trail
                             if a["action"] == "notify-failed"]
    assert failed.startswith(f"sms -> broadcast failed: webhook http://127.0.0.1:{drip.port}: "
                             "not delivered within its deadline of 4 s")
    assert 4.0 <= failed_at - sms_start <= 4.0 + 1.0  # given up at its deadline
    expected = updates(journal, run)
    assert [d["status"] for d in later] == expected[1:]  # the rest went out after it
    # the IM route was never held up by the SMS gateway: each update at once, in order
    assert [slack_fields(m)["status"] for m in servers.im()
            if GROUPS not in m["text"]] == expected
    im_sent = [a["at"] for a in trail if a["action"] == "notify"
               and a["detail"].startswith("im -> @all")]
    assert im_sent[0] - sms_start < 1.0


def test_a_killed_controller_leaves_its_unsent_notices_to_the_next_one(
        servers: Servers, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    journal.close()  # the processes below own the journal file
    cmd = [sys.executable, "-m", "controller", "--journal", str(journal.path)]
    with DripServer(HTTP_OK, every=1.0) as drip:  # holds every SMS as long as it can
        example_plan(servers, tmp_path, monkeypatch, sms_gateway=f"http://127.0.0.1:"
                     f"{drip.port}", options={"timeout": "60s", "deadline": "60s"},
                     shared=True)
        plan_file = str(tmp_path / "plan.yaml")
        env = {**os.environ, "FAILOVER_LEASE_TTL": "2"}  # with the notifiers' secrets
        first = subprocess.Popen([*cmd, "failover", plan_file, "--yes", "--level", "1",
                                  "--reason", "drill"], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    len(drip.connections) == 1 and _recorded(journal.path, "im -> @all") == 6):
                time.sleep(0.1)  # the run is done, every IM sent, the first SMS dripping
            assert first.poll() is None, first.communicate()[0]
            first.send_signal(signal.SIGKILL)  # kill -9 while the SMS notices wait
            output = first.communicate(timeout=30)[0].decode()
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == -signal.SIGKILL, output
    journal = Journal(journal.path)
    [run] = journal.runs()
    assert run.phase is Phase.FAILED_OVER
    assert servers.sms() == []  # no SMS was delivered before the kill
    im_before = servers.im()

    # the next controller, the SMS gateway answering again
    env["FAILOVER_SMS_GATEWAY_URL"] = servers.hooks.endpoint + SMS_PATH
    second = subprocess.run([*cmd, "run", plan_file, "--ticks", "40", "--interval", "0.1"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    expected = updates(journal, run)
    assert [d["status"] for d in servers.sms()] == expected  # each once, in order
    assert servers.im() == im_before  # every IM was sent before the kill: none again
    assert [slack_fields(m)["status"] for m in im_before if GROUPS not in m["text"]] == expected
    trail = journal.audit_trail(run_id=run.id)
    assert notices.undelivered(trail) == []
    journal.close()


def _recorded(path: Path, route: str) -> int:
    """How many notices via `route` the journal records as sent (read by another process
    while the controller writes: a notice received but not yet recorded would be sent
    again after a kill, the one window no controller can close)."""
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM audit WHERE action='notify' AND "
                              "detail LIKE ?", (f"{route}%",)).fetchone()[0])


def test_a_failed_run_and_statuses_of_several_lines_are_e_mailed(
        servers: Servers, journal: Journal, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan = example_plan(servers, tmp_path, monkeypatch, dns_fails=True)
    incident = Incident(plan, journal)
    testing.set_health("dc-a", False)
    reason = ("drill by the shift lead:\n  web: HTTP 503\r\n  api: timed out\n"
              "\tsee the runbook, section 4.2")
    incident.engine.request("failover", actor="oncall", reason=reason, level=3)
    assert incident.reconcile().phase is Phase.FAILED
    run = incident.run()
    trail = journal.audit_trail(run_id=run.id)
    assert [a for a in trail if a["action"] == "notify-failed"] == []
    decided = [p[2] for p in (notices.parse_pending(a["detail"]) for a in trail
                              if a["action"] == notices.PENDING) if p is not None]
    assert run.outcome is not None
    assert decided[0] == notices.started(run)
    assert decided[-1] == notices.failed("failover", run.outcome)
    mails = servers.mails()
    assert len(mails) == len(decided)  # every update e-mailed, the FAILED one too
    for m, status in zip(mails, decided, strict=True):
        assert m.subject == header(f"[notify-drill] level 3 failover: {status}",
                                   SUBJECT_LENGTH)
        assert "\n" not in m.subject and "\r" not in m.subject
        body = m.text
        for line in status.splitlines():  # the full text, every line, in the body
            assert line.strip() in body
    assert mails[0].subject == ("[notify-drill] level 3 failover: failover started: "
                                "requested by oncall: drill by "
                                "the shift lead: web: HTTP 503 api: timed out see the "
                                "runbook, section 4.2")
    assert "FAILED: step dns-cutover failed" in mails[-1].subject

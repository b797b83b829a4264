"""Notice content and routing, pure: routes by level, the services actually down, the
estimated recovery from the remaining steps' targets and progress, stable step sentences,
de-duplication keys, and the one incident-report template every channel renders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller import notices, registry
from controller.journal import Journal, Run
from controller.model import Notice, Phase, StepRecord, StepStatus, Trigger
from controller.notify import common, slack, smtp
from controller.plan import Notification, PlanError, parse_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
DETECTED = 1_700_000_000.0


def plan(**spec: Any):
    data = copy.deepcopy(BASE)
    data["spec"].update(spec)
    return parse_plan(data)


def step(name: str, target: float | None, status: StepStatus = StepStatus.PENDING, *,
         since: float | None = None, met: bool | None = None, action: str = "traffic",
         **extra: Any) -> StepRecord:
    return StepRecord(run_id="r1", index=0, name=name, action=action, status=status,
                      target_s=target, since_detection_s=since, met=met, **extra)


def run(phase: Phase = Phase.FAILING_OVER, finished_at: float | None = None,
        level: int | None = 1) -> Run:
    return Run(id="memory-drill-failover-1", plan="memory-drill", kind="failover",
               phase=phase, level=level, reason="tripped", requested_by="controller",
               detected_at=DETECTED, started_at=DETECTED + 5, finished_at=finished_at,
               approved=True, outcome=None, steps=[], trigger=Trigger.TRIP)


PLAN_STEPS = [step("notify-incident", 600), step("redirect-traffic", 3600),
              step("dns-cutover", 7200), step("link-test", 7200)]


# --- routing ---------------------------------------------------------------------------


def test_routes_are_the_rules_of_exactly_that_level() -> None:
    p = plan()
    assert [(r.notifier, r.recipients) for r in notices.routes(p, 1)] == [
        ("im", ["@all", "sms:broadcast"])]
    assert [(r.notifier, r.recipients) for r in notices.routes(p, 2)] == [
        ("im", ["department-heads"])]
    assert [(r.notifier, r.recipients) for r in notices.routes(p, 3)] == [
        ("mail", ["shift-lead@example.test"])]
    assert notices.routes(p, 4) == []  # no rule for level 4: nobody is told
    # a run without a level (a planned failover): the least severe level's rules only
    assert notices.routes(p, None) == notices.routes(p, 3)


def test_affected_are_the_services_down_in_plan_order() -> None:
    p = plan()
    assert notices.affected(p, {"hotline": 3.0, "web": 9.0}) == ("web", "hotline")
    assert notices.affected(p, ["complaints"]) == ()  # a signal is not a service
    assert notices.affected(p, []) == ()


# --- estimated recovery ------------------------------------------------------------------


def test_estimate_is_when_the_last_remaining_target_falls_due() -> None:
    now = DETECTED + 60
    est = notices.estimate_recovery(PLAN_STEPS, detected_at=DETECTED, now=now)
    assert est == notices.Estimate(DETECTED + 7200, 4, 0.0, False)
    assert est.text(now) == f"by {notices.clock(DETECTED + 7200)} (in 1h 59m; 4 steps left)"


def test_progress_on_time_keeps_the_estimate_and_lateness_moves_it() -> None:
    now = DETECTED + 900
    on_time = [step("notify-incident", 600, StepStatus.SUCCEEDED, since=300, met=True),
               *PLAN_STEPS[1:]]
    est = notices.estimate_recovery(on_time, detected_at=DETECTED, now=now)
    assert (est.at, est.remaining, est.behind) == (DETECTED + 7200, 3, 0.0)
    late = [step("notify-incident", 600, StepStatus.SUCCEEDED, since=900, met=False),
            *PLAN_STEPS[1:]]
    est = notices.estimate_recovery(late, detected_at=DETECTED, now=now)
    assert (est.at, est.behind) == (DETECTED + 7200 + 300, 300.0)
    assert est.text(now).endswith("3 steps left, running 5m behind target)")


def test_only_remaining_steps_count() -> None:
    done = [step("dns-cutover", 7200, StepStatus.SUCCEEDED, since=100, met=True),
            step("compensation", 4 * 3600, StepStatus.SUCCEEDED, since=200, met=True),
            step("link-test", 3600)]
    est = notices.estimate_recovery(done, detected_at=DETECTED, now=DETECTED + 200)
    assert (est.at, est.remaining) == (DETECTED + 3600, 1)
    assert "1 step left" in est.text(DETECTED + 200)


def test_overdue_unknown_and_nothing_left() -> None:
    now = DETECTED + 3 * 3600
    est = notices.estimate_recovery(PLAN_STEPS, detected_at=DETECTED, now=now)
    assert est.overdue and est.at == now  # never earlier than now
    assert est.text(now).startswith("overdue: the remaining steps' targets have passed")
    untimed = [step("revert-dns", None), step("revert-traffic", None)]
    est = notices.estimate_recovery(untimed, detected_at=DETECTED, now=now)
    assert est.at is None and est.text(now).startswith("unknown:")
    finished = [step("a", 60, StepStatus.SUCCEEDED, since=10, met=True),
                step("b", 60, StepStatus.FAILED, since=20, met=False)]
    est = notices.estimate_recovery(finished, detected_at=DETECTED, now=now)
    assert est.remaining == 0 and est.text(now) == "now: no steps left"


def test_recovery_text_by_run_phase() -> None:
    now = DETECTED + 60
    assert notices.recovery_text(run(), PLAN_STEPS, now=now).startswith("by ")
    assert notices.recovery_text(run(Phase.FAILED, now), PLAN_STEPS, now=now).startswith(
        "unknown: the run failed")
    done = notices.recovery_text(run(Phase.FAILED_OVER, now), [], now=now)
    assert done == f"recovered: the failover finished at {notices.clock(now)}"


# --- content, dedup ------------------------------------------------------------------------


def test_step_sentences_are_stable_and_say_target_met_or_missed() -> None:
    ok = step("redirect-traffic", 3600, StepStatus.SUCCEEDED, since=754.2, met=True)
    assert notices.step_status(ok) == ("step redirect-traffic succeeded 12m 34s after detection "
                                       "(target 1h met)")
    late = step("dns-cutover", 7200, StepStatus.SUCCEEDED, since=9000, met=False)
    assert notices.step_status(late).endswith("(target 2h MISSED)")
    failed = step("dns-cutover", 7200, StepStatus.FAILED, since=9, met=False,
                  error="ConnectionError: refused")
    assert notices.step_status(failed) == "step dns-cutover FAILED: ConnectionError: refused"
    human = step("acknowledge-alert", 300, StepStatus.SUCCEEDED, since=180, met=True,
                 action="manual", approved_by="oncall")
    assert notices.step_status(human) == ("step acknowledge-alert done by oncall 3m after "
                                          "detection (target 5m met)")
    assert notices.step_status(step("x", None, StepStatus.REVERTED)) == "step x reverted"


def test_compose_carries_status_down_services_estimate_run_and_link() -> None:
    p = plan(runUrl="https://failover.example.test/runs/")
    n = notices.compose(p, run(), "failover started: tripped", steps=PLAN_STEPS,
                        down={"api": 5.0}, now=DETECTED + 60)
    assert n == Notice(plan="memory-drill", level=1, subject="[memory-drill] level 1 failover",
                       status="failover started: tripped", affected=("api",),
                       estimated_recovery=n.estimated_recovery, run_id="memory-drill-failover-1",
                       link="https://failover.example.test/runs/memory-drill-failover-1",
                       at=DETECTED + 60)
    assert n.estimated_recovery.startswith(f"by {notices.clock(DETECTED + 7200)}")
    assert notices.compose(plan(), run(), "s", steps=[], down={}, now=DETECTED).link == ""
    assert notices.run_link("https://x.test/r", "a/b c") == "https://x.test/r/a%2Fb%20c"


def test_run_url_must_be_an_http_url() -> None:
    with pytest.raises(PlanError, match=r"spec\.runUrl"):
        plan(runUrl="ftp://example.test/runs")


def test_dedup_key_is_run_status_and_route() -> None:
    rule = Notification(level=1, notifier="im", recipients=["@all"])
    key = notices.dedup_key("r1", "step a succeeded", rule)
    assert key == notices.dedup_key("r1", "step a succeeded", rule.model_copy())
    assert len({key,
                notices.dedup_key("r2", "step a succeeded", rule),
                notices.dedup_key("r1", "step b succeeded", rule),
                notices.dedup_key("r1", "step a succeeded",
                                  rule.model_copy(update={"notifier": "sms"})),
                notices.dedup_key("r1", "step a succeeded",
                                  rule.model_copy(update={"recipients": ["heads"]}))}) == 5
    trail = [{"action": "notify", "detail": f"im -> @all {notices.tag(key)}"},
             {"action": "notify-failed", "detail": f"sms failed: x {notices.tag('0' * 16)}"},
             {"action": "escalate", "detail": notices.tag("f" * 16)}]
    assert notices.attempted(trail) == {key, "0" * 16}


def test_within_says_whether_the_notice_met_its_time_target() -> None:
    rule = Notification.model_validate({"level": 3, "notifier": "mail", "within": "30m"})
    assert notices.within(rule, run(), DETECTED + 600) == " (within 30m of detection: met)"
    assert notices.within(rule, run(), DETECTED + 3600).endswith("MISSED)")
    assert notices.within(rule.model_copy(update={"within": None}), run(), DETECTED) == ""


# --- the template, per channel --------------------------------------------------------------

NOTICE = Notice(plan="memory-drill", level=1, subject="[memory-drill] level 1 failover",
                status="step dns-cutover succeeded 2m after detection (target 2h met)",
                affected=("web", "api"), estimated_recovery="by 2023-11-14 23:13 UTC",
                run_id="memory-drill-failover-1", recipients=("@all", "department-heads"),
                link="https://failover.example.test/runs/memory-drill-failover-1",
                at=DETECTED)


def test_one_template_for_every_channel() -> None:
    text = common.render(NOTICE)
    for line in ("INCIDENT NOTICE: [memory-drill] level 1 failover",
                 "Time:               2023-11-14 22:13 UTC",
                 "Plan / level:       memory-drill / level 1",
                 f"Status:             {NOTICE.status}",
                 "Affected services:  web, api",
                 "Estimated recovery: by 2023-11-14 23:13 UTC",
                 f"Run:                memory-drill-failover-1 ({NOTICE.link})",
                 "To:                 @all, department-heads"):
        assert line in text.splitlines()
    doc = common.document(NOTICE)
    assert {k: doc[k] for k in ("plan", "level", "status", "affected", "estimatedRecovery",
                                "run", "recipients")} == {
        "plan": "memory-drill", "level": 1, "status": NOTICE.status,
        "affected": ["web", "api"], "estimatedRecovery": "by 2023-11-14 23:13 UTC",
        "run": {"id": "memory-drill-failover-1", "link": NOTICE.link},
        "recipients": ["@all", "department-heads"]}
    assert doc["text"] == text
    assert len(doc["message"]) <= common.SMS_LENGTH
    assert doc["message"].startswith("memory-drill-failover-1 L1 ")
    quiet = Notice(plan="p", level=None, subject="s", status="ok")
    assert "Affected services:  none down now" in common.render(quiet)
    assert "Estimated recovery: unknown" in common.render(quiet)


def test_slack_payload_has_fallback_text_blocks_and_mentions() -> None:
    body = slack.payload(NOTICE, {"department-heads": "<!subteam^S1>"})
    assert body["text"].startswith("<!channel> <!subteam^S1> L1 memory-drill: ")
    header, status, fields, context = body["blocks"]
    assert header["text"]["text"] == NOTICE.subject
    assert status["text"]["text"] == f"*Status:* {NOTICE.status}"
    assert [f["text"] for f in fields["fields"]] == [
        "*Level*\n1", "*Affected services*\nweb, api",
        "*Estimated recovery*\nby 2023-11-14 23:13 UTC",
        f"*Run*\n<{NOTICE.link}|memory-drill-failover-1>"]
    assert context["elements"][0]["text"] == "To: <!channel> <!subteam^S1>"
    odd = slack.payload(Notice(plan="p", level=2, subject="s", status="a < b & <!here>"))
    assert odd["blocks"][1]["text"]["text"] == "*Status:* a &lt; b &amp; &lt;!here&gt;"


def test_email_goes_to_addresses_only() -> None:
    assert smtp.addresses(["@all", "sms:broadcast", "department-heads", "lead@example.test",
                           "a b@x.test"]) == ["lead@example.test"]
    msg = smtp.message(NOTICE, sender="failover@example.test", to=["lead@example.test"])
    assert msg["Subject"] == f"{NOTICE.subject}: {NOTICE.status}"
    assert msg["References"] == "<memory-drill-failover-1@failoverctl>"
    assert msg["X-Failover-Level"] == "1"
    assert msg.get_content() == common.render(NOTICE)


@pytest.mark.parametrize(("kind", "options", "problem"), [
    ("smtp", {"host": "h", "from": "a@b.test", "username": "u",
              "password": {"fromEnv": "P"}}, "only sent over STARTTLS"),
    ("smtp", {"host": "h", "from": "a@b.test", "username": "u"}, "give both username"),
    ("smtp", {"host": "h", "from": "not-an-address"}, "should match pattern"),
    ("webhook", {"url": "https://hooks.example.test/T0KEN"}, "url"),
    ("slack", {"url": {"fromEnv": "U"}, "channel": "#x"}, "Extra inputs"),
    ("webhook", {"url": {"fromEnv": "U"}, "attempts": 0}, "greater than or equal to 1"),
])
def test_options_are_validated_by_each_notifier(kind: str, options: dict[str, Any],
                                                problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        registry.parse_options("notifier", kind, options)


def test_options_take_camel_case_aliases() -> None:
    opts = registry.parse_options("notifier", "smtp", {
        "host": "smtp.example.test", "port": 587, "from": "failover@example.test",
        "starttls": True, "caFile": "/etc/ssl/ca.pem", "username": "failover",
        "password": {"fromFile": "/etc/failover/smtp-password"}, "deadline": "20s"})
    assert isinstance(opts, smtp.SmtpOptions)
    assert (opts.sender, opts.ca_file, opts.deadline) == (
        "failover@example.test", "/etc/ssl/ca.pem", 20.0)


# --- SMS: one GSM-7 part, the run id first ----------------------------------------------------

# GSM 03.38, the default alphabet in code order (0x00-0x7F); 0x0A LF, 0x0D CR and 0x1B
# ESC (the escape to the extension table) are no characters an SMS should carry.
GSM_03_38 = ("@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"
             "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e\x1b\u00c6\u00e6"
             "\u00df\u00c9 !\"#\u00a4%&'()*+,-./0123456789:;<=>?\u00a1ABCDEFGHIJKLMNOPQRSTUVWXYZ"
             "\u00c4\u00d6\u00d1\u00dc\u00a7\u00bfabcdefghijklmnopqrstuvwxyz\u00e4\u00f6\u00f1"
             "\u00fc\u00e0")
SMS_SAFE = set(GSM_03_38) - {"\n", "\r", "\x1b"}
HOSTILE = [
    "failover started: availability 0 % < 70 % \u2014 \u00abhotline\u00bb down \u2026",
    "step restore-db FAILED: pgbackrest exited 82:\nERROR: [082]: unable to restore\r\n"
    "\tHINT: is {the cluster} running? ~/data|^x \\ \u20ac",
    "escalated to level 1 \U0001f6a8\U0001f525 \u2192 department heads \u2264 5 min",
    "\u6545\u969c: \u6570\u636e\u4e2d\u5fc3 \u4e0d\u53ef\u7528 " * 30,
    "x" * 1000,
    "\x00\x07\x1b[31mred\x1b[0m \u2028 \u2029 \u200b zero-width \ufeff",
    "caf\u00e9 na\u00efve \u00e7a \u00f0 \u00fe \u0142\u00f3d\u017a \u0131 "
    "\uff26\uff55\uff4c\uff4c\uff57",
    "",
]


@pytest.mark.parametrize("status", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize(("run_id", "level", "affected", "estimate"), [
    ("memory-drill-failover-20231114-221300-6ab15c", 1, ("web", "api", "hotline"),
     "by 2023-11-14 23:13 UTC (in 1h 59m; 4 steps left)"),
    ("r", None, (), ""),
    ("notify-drill-failover-1", 2, ("web",), "unknown: the run failed \u2014 see the runbook"),
])
def test_every_sms_is_one_gsm7_part_starting_with_the_run_id(
        status: str, run_id: str, level: int | None, affected: tuple[str, ...],
        estimate: str) -> None:
    n = Notice(plan="memory-drill", level=level, subject="s", status=status,
               affected=affected, estimated_recovery=estimate, run_id=run_id)
    text = common.document(n)["message"]  # what the webhook notifier sends a gateway
    assert set(text) <= SMS_SAFE, sorted(set(text) - SMS_SAFE)
    assert len(text) <= 160
    assert text.startswith(f"{run_id} L{level if level is not None else '-'} memory-drill: ")
    assert text == common.sms(n)


def test_sms_keeps_what_it_can_and_says_it_was_cut() -> None:
    n = Notice(plan="memory-drill", level=1, subject="s", run_id="memory-drill-failover-1",
               status="step dns-cutover FAILED: \u00abns1\u00bb refused \u2014 retry\u2026 "
                      + "y" * 300)
    text = common.sms(n)
    assert text.startswith('memory-drill-failover-1 L1 memory-drill: step dns-cutover FAILED: '
                           '"ns1" refused - retry... yyy')
    assert len(text) == 160 and text.endswith("...")
    assert common.gsm7("Gr\u00fc\u00dfe \u00e0 \u00c9milie, \u00e7a va? \u0141\u00f3d\u017a") == (
        "Gr\u00fc\u00dfe \u00e0 \u00c9milie, ca va? Lodz")
    assert common.gsm7("\u6545\u969c \u6545\u969c") == "? ?"


def test_email_subject_is_one_line_and_the_body_has_every_line() -> None:
    status = ("failover FAILED: step restore-db failed: pgbackrest exited 82:\nERROR: [082]\r\n"
              "\tHINT: is the cluster running?\u2028done")
    n = Notice(plan="p", level=3, subject="[p] level 3 failover", status=status,
               run_id="p-failover-1\nX-Injected: yes")
    msg = smtp.message(n, sender="failover@example.test", to=["lead@example.test"])
    assert msg["Subject"] == ("[p] level 3 failover: failover FAILED: step restore-db failed: "
                              "pgbackrest exited 82: ERROR: [082] HINT: is the cluster "
                              "running? done")
    assert msg["X-Failover-Run"] == "p-failover-1 X-Injected: yes"  # no header smuggled in
    assert "X-Injected" not in msg
    body = msg.get_content()
    assert "Status:             failover FAILED: step restore-db failed: pgbackrest exited 82:\n"\
           "                    ERROR: [082]\n" in body
    long = smtp.message(Notice(plan="p", level=3, subject="s", status="z\n" * 500),
                        sender="failover@example.test", to=["lead@example.test"])
    assert len(long["Subject"]) == smtp.SUBJECT_LENGTH and long["Subject"].endswith("\u2026")
    assert long.as_bytes()  # the library accepts every header as it is


# --- a step waiting for a person ----------------------------------------------------------


def test_a_step_asking_a_person_is_told_once_with_the_command(journal: Journal) -> None:
    from tests.unit.test_promote_step import asking_world

    world, db = asking_world(journal)
    run = world.run()
    im = world.backends.get("im")
    asking = [n for n in im.sent() if "needs a person" in n["status"]]
    assert [n["recipients"] for n in asking] == [["@all", "sms:broadcast"]]  # level 1's route
    status = asking[0]["status"]
    assert status.startswith("step promote-db needs a person (asked ")
    assert "the old primary dc-a:5432 cannot be reached" in status
    assert f"failoverctl done {run.id} promote-db" in status
    for _ in range(5):  # the run waits: nobody is told again
        world.tick(False)
    assert [n["status"] for n in im.sent()].count(status) == 1
    db.fence_by_person("dc-a")
    world.engine.done(run.id, "promote-db", actor="oncall")
    for _ in range(3):
        world.tick(False)
    assert world.run().phase is Phase.FAILED_OVER
    sent = [n["status"] for n in im.sent()]
    assert sent.count(status) == 1
    assert any(s.startswith("step promote-db succeeded") for s in sent)


def test_only_a_question_a_step_asked_is_a_person_notice() -> None:
    asked = {"why": "stop it by hand, then: failoverctl done r1 promote-db",
             "askedAt": DETECTED, "until": DETECTED + 3600, "expired": "fence-unconfirmed"}
    waiting = step("promote-db", None, StepStatus.AWAITING_PERSON, action="promote",
                   evidence={"person": asked})
    assert notices.person_needed(waiting) == (
        "step promote-db needs a person (asked 2023-11-14 22:13 UTC): stop it by hand, "
        "then: failoverctl done r1 promote-db")
    manual = step("compensation-plan", None, StepStatus.AWAITING_PERSON, action="manual",
                  evidence={"instructions": "draw up the plan"})
    confirmed = step("promote-db", None, StepStatus.RUNNING, action="promote",
                     evidence={"person": {**asked, "confirmedBy": "oncall"}})
    assert notices.person_needed(manual) is None
    assert notices.person_needed(confirmed) is None

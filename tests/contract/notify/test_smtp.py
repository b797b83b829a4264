"""The SMTP notifier against a real local SMTP server (aiosmtpd): STARTTLS and login, the
message (recipients, subject, template body, run headers), a status of several lines (a
FAILED step's stderr) delivered with a one-line subject and every line in the body,
retries bounded on 451 then 250, permanent refusals not retried, and the password never
in an error or a log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from controller.drill.servers.mail import MailServer
from controller.model import Notice
from controller.notify.common import NotifyError, render
from controller.notify.smtp import SUBJECT_LENGTH
from tests.contract.notify.conftest import SMTP_PASSWORD, SMTP_USER, build, smtp_options

NOTICE = Notice(plan="notify-drill", level=3, subject="[notify-drill] level 3 failover",
                status="failover started: tripped: web down", affected=("web",),
                estimated_recovery="by 2023-11-14 23:13 UTC (in 1h 59m; 4 steps left)",
                run_id="notify-drill-failover-3",
                recipients=("shift-lead@example.test", "@all", "department-heads"),
                link="https://failover.example.test/runs/notify-drill-failover-3",
                at=1_700_000_000.0)

SecretFile = Callable[[str], dict[str, str]]


def test_mails_the_template_over_starttls_after_login(mail: MailServer,
                                                      secret_file: SecretFile) -> None:
    build("smtp", smtp_options(mail, secret_file)).send(notice=NOTICE)
    [m] = mail.messages()
    assert m.tls and m.login == SMTP_USER
    assert m.mail_from == "failover@example.test"
    assert m.rcpt_tos == ("shift-lead@example.test",)  # addresses only, not @all or groups
    assert m.subject == "[notify-drill] level 3 failover: failover started: tripped: web down"
    assert m.message["References"] == "<notify-drill-failover-3@failoverctl>"
    assert m.message["X-Failover-Run"] == "notify-drill-failover-3"
    assert m.text == render(NOTICE)


FAILED_STATUS = (
    "failover FAILED: step restore-db failed: pgbackrest restore exited 82:\n"
    "ERROR: [082]: unable to restore to path '/var/lib/postgresql/16/main'\r\n"
    "       HINT: is the cluster still running?\n"
    "\tstanza: main\u2028archive: 16-1")


def test_a_status_of_several_lines_is_mailed_with_a_one_line_subject(
        mail: MailServer, secret_file: SecretFile) -> None:
    failed = replace(NOTICE, status=FAILED_STATUS)
    build("smtp", smtp_options(mail, secret_file)).send(notice=failed)
    [m] = mail.messages()
    assert m.subject.startswith("[notify-drill] level 3 failover: failover FAILED: step "
                                "restore-db failed: pgbackrest restore exited 82: ERROR: "
                                "[082]: unable to restore to path '/var/lib/postgresql/16/"
                                "main' HINT: is the cluster")
    assert len(m.subject) == SUBJECT_LENGTH and m.subject.endswith("\u2026")
    assert m.text == render(failed)  # the full text, every line, in the body
    for line in FAILED_STATUS.replace("\u2028", "\n").splitlines():
        assert line.strip() in m.text
    assert m.message["X-Failover-Run"] == "notify-drill-failover-3"


def test_a_long_status_of_two_lines_is_cut_in_the_subject_only(mail: MailServer,
                                                  secret_file: SecretFile) -> None:
    long = replace(NOTICE, status="failover FAILED: step link-test failed:\n"
                   + "unreachable; " * 40)
    build("smtp", smtp_options(mail, secret_file)).send(notice=long)
    [m] = mail.messages()
    assert len(m.subject) == SUBJECT_LENGTH and m.subject.endswith("\u2026")
    assert ("unreachable; " * 40).strip() in m.text


def test_routes_without_addresses_use_the_default_to(mail: MailServer,
                                                     secret_file: SecretFile) -> None:
    notifier = build("smtp", smtp_options(mail, secret_file, to=["oncall@example.test"]))
    notifier.send(notice=Notice(plan="p", level=3, subject="s", status="x",
                                recipients=("@all",)))
    assert [m.rcpt_tos for m in mail.messages()] == [("oncall@example.test",)]


def test_no_address_at_all_raises_without_contacting_the_server(
        mail: MailServer, secret_file: SecretFile) -> None:
    with pytest.raises(NotifyError, match="no e-mail address among the recipients"):
        build("smtp", smtp_options(mail, secret_file)).send(
            notice=Notice(plan="p", level=1, subject="s", status="x", recipients=("@all",)))
    assert mail.attempts == 0


def test_451_then_250_is_retried_and_delivered_once(mail: MailServer,
                                                    secret_file: SecretFile) -> None:
    mail.respond(["451 4.3.0 try again later"])
    build("smtp", smtp_options(mail, secret_file)).send(notice=NOTICE)
    assert mail.attempts == 2
    assert len(mail.messages()) == 1


def test_retries_are_bounded_and_the_password_never_shows(
        mail: MailServer, secret_file: SecretFile, caplog: pytest.LogCaptureFixture) -> None:
    mail.respond(["451 4.3.0 try again later"] * 10)
    notifier = build("smtp", smtp_options(mail, secret_file, attempts=3))
    with pytest.raises(NotifyError) as err:
        notifier.send(notice=NOTICE)
    assert mail.attempts == 3 and mail.messages() == []
    assert str(err.value) == (f"smtp {mail.host}:{mail.port} answered 451 4.3.0 try again "
                              "later (after 3 attempts)")
    assert SMTP_PASSWORD not in str(err.value) + caplog.text + repr(notifier)


def test_a_rejected_login_is_not_retried_and_hides_the_password(
        mail: MailServer, secret_file: SecretFile, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-pa55word-0000"
    options = smtp_options(mail, secret_file) | {"password": secret_file(wrong)}
    with pytest.raises(NotifyError) as err:
        build("smtp", options).send(notice=NOTICE)
    assert str(err.value) == (f"smtp {mail.host}:{mail.port}: login as {SMTP_USER} rejected "
                              "(535); check the password secret (after 1 attempt)")
    assert wrong not in caplog.text and mail.attempts == 0


def test_a_refused_recipient_is_not_retried(mail: MailServer, secret_file: SecretFile) -> None:
    mail.respond(["554 5.7.1 message refused"])
    with pytest.raises(NotifyError, match="answered 554 5.7.1 message refused "
                                          r"\(after 1 attempt\)"):
        build("smtp", smtp_options(mail, secret_file)).send(notice=NOTICE)
    assert mail.attempts == 1


def test_an_untrusted_certificate_fails_starttls(mail: MailServer,
                                                 secret_file: SecretFile) -> None:
    options = smtp_options(mail, secret_file)
    del options["caFile"]  # the throw-away CA is not among the system's
    with pytest.raises(NotifyError, match=r"TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
        build("smtp", options).send(notice=NOTICE)
    assert mail.messages() == []


def test_a_plain_relay_without_tls_or_login() -> None:
    with MailServer() as relay:
        build("smtp", {"host": relay.host, "port": relay.port,
                       "from": "failover@example.test", "backoff": "10ms"}).send(notice=NOTICE)
        [m] = relay.messages()
        assert not m.tls and m.login is None
        assert m.rcpt_tos == ("shift-lead@example.test",)


def test_a_relay_that_requires_tls_refuses_a_plain_sender(secret_file: SecretFile) -> None:
    with MailServer(starttls=True, users={SMTP_USER: SMTP_PASSWORD}) as relay:
        notifier = build("smtp", {"host": relay.host, "port": relay.port,
                                  "from": "failover@example.test", "backoff": "10ms"})
        with pytest.raises(NotifyError, match="530"):
            notifier.send(notice=NOTICE)
        assert relay.messages() == []

"""What the journal redacts: the messages it stores (reasons, errors, sentences, audit
details and the message fields of evidence, policy and readiness), never the record
itself (names, ids, numbers, step definitions, the evidence a revert restores); and how
a secret's length decides where it is scrubbed."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import secrets
from controller.journal import Journal, PlanState
from controller.model import Decision, DecisionState, Phase, StepStatus
from controller.secrets import MASK, SecretError, SecretRef, Secrets, forget, redact, remember

LONG = "k8s-T0KEN-a1b2c3"  # 16 characters: scrubbed wherever it appears
SHORT = "test"  # 4 characters: scrubbed only as a word


@pytest.fixture(autouse=True)
def _known() -> Iterator[None]:
    """Only this file's secrets are known while it runs: values earlier tests' servers
    revealed (moto's "testing" credentials) would scrub the words these tests keep."""
    earlier = set(secrets._known)
    forget(*earlier)
    remember(LONG)
    remember(SHORT)
    yield
    forget(LONG, SHORT)
    for value in earlier:
        remember(value)


def test_a_long_secret_is_scrubbed_wherever_it_appears() -> None:
    assert redact(f"GET /?token={LONG}&x=1") == f"GET /?token={MASK}&x=1"
    assert redact(f"Bearer{LONG}") == f"Bearer{MASK}"


@pytest.mark.parametrize(("text", "expected"), [
    ("token test rejected", f"token {MASK} rejected"),
    ("token=test", f"token={MASK}"),
    ("the password was test.", f"the password was {MASK}."),
    ("step link-test failed", "step link-test failed"),  # a name containing it
    ("www.test.example", "www.test.example"),  # a host name
    ("testing, contest", "testing, contest"),  # longer words
])
def test_a_short_secret_is_scrubbed_only_as_a_word(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_short_numeric_secret_leaves_numbers_and_ids_alone() -> None:
    remember("7000")
    try:
        for text in ("at 1797000000.0", "1797000000.7000", "[notice 7000ab12cd34ef56]",
                     "memory-drill-failover-1797000000-7000ab"):
            assert redact(text) == text
        assert redact("pin 7000 refused") == f"pin {MASK} refused"
    finally:
        forget("7000")


def test_kept_parts_are_written_exactly_even_when_they_contain_a_secret() -> None:
    tag = f"[notice {LONG}]"  # contrived: a key that contains a secret
    text = redact(f"im -> @all failed: token {LONG} {tag}", keep=[tag])
    assert text == f"im -> @all failed: token {MASK} {tag}"


def test_a_secret_of_one_to_three_characters_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINY_SECRET", "ab1")
    with pytest.raises(SecretError) as err:
        Secrets().reveal(SecretRef.model_validate({"fromEnv": "TINY_SECRET"}))
    message = str(err.value)
    assert "environment variable TINY_SECRET" in message and "3 characters" in message
    assert "ab1" not in message
    assert redact("pin ab1") == "pin ab1"  # not remembered half-way either


def test_a_short_secret_is_revealed_with_one_warning_that_names_only_its_reference(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SHORT_SECRET", "hunter2")
    ref = SecretRef.model_validate({"fromEnv": "SHORT_SECRET"})
    try:
        with caplog.at_level(logging.WARNING, logger="controller.secrets"):
            assert Secrets().reveal(ref) == "hunter2"
            Secrets().reveal(ref)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1
        assert "environment variable SHORT_SECRET is only 7 characters" in warnings[0]
        assert "hunter2" not in warnings[0]
        assert redact("password hunter2 refused") == f"password {MASK} refused"
    finally:
        forget("hunter2")


def test_an_empty_secret_is_nothing_to_scrub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_SECRET", "")
    assert Secrets().reveal(SecretRef.model_validate({"fromEnv": "EMPTY_SECRET"})) == ""
    assert redact("nothing to hide") == "nothing to hide"


def test_the_journal_redacts_messages_and_keeps_the_record(journal: Journal) -> None:
    steps: list[dict[str, Any]] = [
        {"name": "link-test", "action": "verify", "params": {"token-test": LONG}},
        {"name": "notify-test", "action": "notify"}]
    run = journal.start_run(plan="test-plan", kind="failover", phase=Phase.FAILING_OVER,
                            level=1, reason=f"tripped: token {SHORT} and {LONG} rejected",
                            requested_by="controller", detected_at=1_797_000_000.0,
                            now=1_797_000_007.0, steps=steps, approved=True)
    assert run.steps == steps  # the frozen definitions, exactly as given
    assert run.reason == f"tripped: token {MASK} and {MASK} rejected"
    rec = journal.step(run.id, "link-test")
    rec.status, rec.error = StepStatus.FAILED, f"401 for ?token={LONG}: {SHORT} refused"
    rec.evidence = {"before": [{"name": "test.example.", "values": [LONG]}],
                    "snapshot": {"weights": {"dc-test": 100}},
                    "revertError": f"refused {SHORT}",
                    "checked": [{"name": "test", "ok": False, "detail": f"key {LONG}"}]}
    journal.save_step(rec)
    stored = journal.step(run.id, "link-test")
    assert stored.name == "link-test" and stored.error == f"401 for ?token={MASK}: {MASK} refused"
    # data a revert restores stays exactly as it was; only message fields are scrubbed
    assert stored.evidence == {"before": [{"name": "test.example.", "values": [LONG]}],
                               "snapshot": {"weights": {"dc-test": 100}},
                               "revertError": f"refused {MASK}",
                               "checked": [{"name": "test", "ok": False,
                                            "detail": f"key {MASK}"}]}
    journal.record_decision("test-plan", Decision(DecisionState.TRIPPED, 1,
                                                  f"tripped: {SHORT} down", 1_797_000_007.0))
    assert journal.decisions("test-plan")[0]["sentence"] == f"tripped: {MASK} down"
    assert journal.decisions("test-plan")[0]["at"] == 1_797_000_007.0
    policy = {"services": {"test": {"failures": 7000, "successes": 0,
                                    "failing_since": 1_797_000_000.0,
                                    "history": [[1_797_000_000.0, False]],
                                    "last_detail": f"HTTP 401 (token {SHORT})"}},
              "detected_at": 1_797_000_000.0}
    journal.save_plan_state(PlanState("test-plan", Phase.FAILING_OVER, 1, "dc-test",
                                      f"tripped: {LONG}", policy, 1_797_000_007.0,
                                      {"checks": [{"name": "test", "detail": SHORT}]}))
    state = journal.plan_state("test-plan")
    assert state is not None and state.active_site == "dc-test"
    assert state.last_decision == f"tripped: {MASK}"
    assert state.policy["services"]["test"]["last_detail"] == f"HTTP 401 (token {MASK})"
    assert state.policy["services"]["test"]["failures"] == 7000
    assert state.readiness == {"checks": [{"name": "test", "detail": MASK}]}
    journal.audit(at=1.0, actor="controller", action="notify", plan="test-plan",
                  run_id=run.id, detail=f"im failed: {LONG} [notice {LONG}]",
                  keep=[f"[notice {LONG}]"])
    assert journal.audit_trail(run_id=run.id)[-1]["detail"] == (
        f"im failed: {MASK} [notice {LONG}]")


def test_a_secret_revealed_by_one_plan_leaves_every_plans_rows_intact(
        tmp_path: Path) -> None:
    """In the operator every plan shares one journal and one set of revealed secrets."""
    journal = Journal(tmp_path / "j.db")
    remember("drill")  # say plan A's secret; plan B is named memory-drill
    try:
        journal.save_plan_state(PlanState("memory-drill", Phase.HEALTHY, None, "dc-a",
                                          "healthy: drill ok", {"services": {}}, 5.0, {}))
        state = journal.plan_state("memory-drill")
        assert state is not None and state.plan == "memory-drill"
        assert state.last_decision == f"healthy: {MASK} ok"
    finally:
        forget("drill")
        journal.close()
    row = sqlite3.connect(tmp_path / "j.db").execute("SELECT plan FROM plan_state").fetchone()
    assert row == ("memory-drill",)


def test_forget_stops_scrubbing() -> None:
    remember("rotated-out-1")
    assert redact("rotated-out-1") == MASK
    forget("rotated-out-1")
    assert redact("rotated-out-1") == "rotated-out-1"
    assert "rotated-out-1" not in secrets._known

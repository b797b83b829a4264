"""Notices survive a crash: whatever moment a controller dies at, the next one sends every
notice of the run exactly once.

A controller is "killed" at the moment a notice is decided (the run row is written, the
`notify-pending` row is not: what `kill -9` between the two leaves), or after deciding
every notice but before sending any (its outbox never holds the lease), or half-way.
A second controller then takes the plan over once the first one's lease expired, on
the same journal, and a third one finds nothing left to send. Notifiers are the
in-memory fakes; the real-server cases are in tests/e2e/test_notifications.py.
"""

from __future__ import annotations

import copy
import sqlite3
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import notices, testing
from controller.backends import Backends
from controller.journal import Journal, Run
from controller.loop import Clock, Engine
from controller.model import Phase, Sample
from controller.plan import FailoverPlan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
SERVICES = ("web", "api", "hotline")


class Killed(BaseException):
    """The controller process dies here: the journal keeps what was written so far."""


def make_plan(mutate: Callable[[dict[str, Any]], None] | None = None) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    if mutate:
        mutate(data["spec"])
    return parse_plan(data)


def failing_dns(spec: dict[str, Any]) -> None:
    spec["backends"][1]["options"]["fail"] = True


class Controller:
    """An engine on a shared fake clock, like one controller process."""

    def __init__(self, plan: FailoverPlan, journal: Journal, clock: testing.FakeClock,
                 holder: str):
        self.plan, self.journal, self.clock = plan, journal, clock
        self.engine = Engine(plan, journal, backends=Backends(plan), holder=holder,
                             clock=Clock(now=clock.now, sleep=clock.sleep), backoff=0.01)

    def never_sends(self) -> None:
        """It dies before its outbox sends anything (its notices stay decided only)."""
        self.engine.lease.current = lambda: False  # type: ignore[method-assign]

    def dies_deciding(self, prefix: str) -> None:
        """It is killed when it decides the notice whose status starts with `prefix`,
        after the run was written and before the notice is."""
        decide = self.engine.notices.notify

        def notify(run: Run, status: str, **kwargs: Any) -> None:
            if status.startswith(prefix):
                raise Killed(status)
            decide(run, status, **kwargs)

        self.engine.notices.notify = notify  # type: ignore[method-assign]

    def outage(self) -> None:
        testing.set_health("dc-a", False)
        for _ in range(12):
            self.clock.advance(0.2)
            now = self.clock.now()
            state = self.engine.tick([Sample(s, False, now, detail="HTTP 503")
                                      for s in SERVICES])
            if state.phase not in (Phase.HEALTHY, Phase.DEGRADED):
                return

    def take_over(self) -> Phase:
        """A new process on the same journal, after the dead one's lease ran out."""
        self.clock.advance(60)
        phase = self.engine.reconcile().phase
        assert self.engine.flush_notices(timeout=30)
        return phase


def sent(key: str = "im") -> list[str]:
    return [n["status"] for n in testing.FakeNotifier(
        testing.FakeNotifier.Options(key=key)).sent()]


def updates(journal: Journal, plan: FailoverPlan) -> list[str]:
    """What the run must have announced, in order: every notice decided in the journal,
    which starts with the run's start and ends with its end (complete or FAILED)."""
    [run] = journal.runs(plan.name)
    decided = [notices.parse_pending(a["detail"]) for a in journal.audit_trail(run_id=run.id)
               if a["action"] == notices.PENDING]
    statuses = [p[2] for p in decided if p is not None]
    assert run.outcome is not None
    end = (notices.completed(run.kind, run.outcome, "dc-b") if run.phase is Phase.FAILED_OVER
           else notices.failed(run.kind, run.outcome))
    assert statuses[0] == notices.started(run) and statuses[-1] == end
    steps = [notices.step_status(s) for s in journal.steps(run.id)
             if s.status in notices.FINISHED]
    assert set(steps) <= set(statuses)  # every finished step as it finally stands, too
    return statuses


def routed(statuses: list[str]) -> list[str]:
    """The level-1 route's notices: the notify-incident step's own push is not one."""
    return [s for s in statuses if not s.startswith("all online channels down")]


@pytest.mark.parametrize(("crash", "plan_change"), [
    ("failover started", None),         # the run is written, its start not yet decided
    ("failover complete", None),        # the run is finished, its end not yet decided
    ("failover FAILED", failing_dns),   # the run failed, its FAILED notice not decided
    ("", None),                         # every notice decided, none sent
], ids=["after-start-written", "after-complete-written", "after-failed-written",
        "decided-not-sent"])
def test_every_notice_is_sent_exactly_once_whenever_the_controller_dies(
        journal: Journal, crash: str, plan_change: Callable[[dict[str, Any]], None] | None
        ) -> None:
    plan = make_plan(plan_change)
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.never_sends()
    if crash:
        first.dies_deciding(crash)
    try:
        first.outage()
    except Killed:
        pass
    else:
        assert not crash, f"the controller never decided {crash!r}"
    assert routed(sent()) == []  # nobody was told anything yet

    second = Controller(plan, Journal(journal.path), clock, "ctl-2")
    assert second.take_over() in (Phase.FAILED_OVER, Phase.FAILED)
    expected = updates(journal, plan)
    assert routed(sent()) == expected  # each update once, in order
    third = Controller(plan, Journal(journal.path), clock, "ctl-3")
    third.take_over()
    assert routed(sent()) == expected  # and never again


def test_a_controller_that_sent_half_leaves_only_the_rest(journal: Journal) -> None:
    plan = make_plan()
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.dies_deciding("failover complete")
    with pytest.raises(Killed):
        first.outage()
    assert first.engine.flush_notices(timeout=30)
    before = routed(sent())
    assert len(before) == 5  # start and the four steps went out before it died

    Controller(plan, Journal(journal.path), clock, "ctl-2").take_over()
    expected = updates(journal, plan)
    assert routed(sent()) == expected and expected[:5] == before


def test_a_level_rise_decided_by_nobody_is_announced_once(journal: Journal) -> None:
    plan = make_plan(lambda s: s["steps"][3].update(approval=True))
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.never_sends()
    first.dies_deciding("escalated")
    testing.set_health("dc-a", False)
    for _ in range(8):  # two services of three down: level 2
        clock.advance(0.2)
        now = clock.now()
        state = first.engine.tick([Sample("web", False, now), Sample("api", True, now),
                                   Sample("hotline", False, now)])
        if state.phase is Phase.AWAITING_APPROVAL:
            break
    with pytest.raises(Killed):  # then all three: level 1, and it dies deciding the notice
        for _ in range(4):
            clock.advance(0.2)
            now = clock.now()
            first.engine.tick([Sample(s, False, now) for s in SERVICES])
    [run] = journal.runs(plan.name)
    assert run.level == 1

    Controller(plan, Journal(journal.path), clock, "ctl-2").take_over()
    told = routed(sent())
    assert told.count("escalated to level 1") == 1
    assert told[0].startswith("failover started: ")  # to the level-2 route first...
    im = testing.FakeNotifier(testing.FakeNotifier.Options(key="im")).sent()
    pairs = Counter((n["status"], tuple(n["recipients"])) for n in im)
    assert all(count == 1 for count in pairs.values()), pairs  # ...nothing twice to one route


def test_only_the_lease_holder_sends(journal: Journal) -> None:
    plan = make_plan()
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.engine.reconcile()
    assert first.engine.lease.current()
    clock.advance(60)  # it stopped renewing: the lease is no longer its own
    assert not first.engine.lease.current()
    second = Controller(plan, Journal(journal.path), clock, "ctl-2")
    second.engine.reconcile()
    assert second.engine.lease.current() and not first.engine.lease.current()


def test_notices_of_a_run_long_over_are_given_up_not_sent_late(journal: Journal) -> None:
    plan = make_plan()
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.never_sends()
    first.outage()
    [run] = journal.runs(plan.name)
    assert run.phase is Phase.FAILED_OVER
    clock.advance(2 * 3600)  # the next controller starts two hours later

    second = Controller(plan, Journal(journal.path), clock, "ctl-2")
    second.take_over()
    assert routed(sent()) == []
    trail = journal.audit_trail(run_id=run.id)
    given_up = [a["detail"] for a in trail if a["action"] == "notify-failed"]
    assert len(given_up) == 6
    assert all("not sent after a restart: its run finished 2h 1m ago" in d for d in given_up)
    assert notices.undelivered(trail) == []  # nothing is left for a later controller


def test_a_pending_notice_names_its_route_key_and_full_status(journal: Journal) -> None:
    plan = make_plan()
    first = Controller(plan, journal, testing.FakeClock(), "ctl-1")
    first.never_sends()
    first.outage()
    [run] = journal.runs(plan.name)
    rows = [a for a in journal.audit_trail(run_id=run.id) if a["action"] == notices.PENDING]
    assert len(rows) == 6
    parsed = notices.parse_pending(rows[0]["detail"])
    assert parsed is not None
    where, key, status = parsed
    assert where == "im -> @all, sms:broadcast" and status == notices.started(run)
    assert key == notices.dedup_key(run.id, status, plan.spec.notifications[0])
    # straight in the journal file, as an operator reading it after an incident would
    with closing(sqlite3.connect(journal.path)) as db:
        details = [r[0] for r in db.execute(
            "SELECT detail FROM audit WHERE action='notify-pending' ORDER BY id")]
    assert details[0] == f"im -> @all, sms:broadcast queued [notice {key}]: {status}"


def test_a_notice_sent_after_a_restart_still_names_the_incident_record(
        journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided by a controller that died before sending, a notice is composed again by the
    next one: with the incident record's location, like every notice of the run."""
    bodies: list[str] = []
    monkeypatch.setattr(testing.FakeNotifier, "send",
                        lambda self, *, notice: bodies.append(notice.body))
    records = tmp_path / "records"
    plan = make_plan(lambda s: s.update(
        records={"store": {"kind": "directory", "options": {"path": str(records)}}}))
    clock = testing.FakeClock()
    first = Controller(plan, journal, clock, "ctl-1")
    first.never_sends()
    first.outage()
    bodies.clear()  # the notify-incident step's own push: sent at once, not by the outbox
    Controller(plan, Journal(journal.path), clock, "ctl-2").take_over()
    [run] = journal.runs(plan.name)
    assert bodies and set(bodies) == {f"Incident record: {records}/incidents/{plan.name}/"
                                      f"{run.id}/"}

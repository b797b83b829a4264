"""The notify step names the services that are down, as the run's notices do — not every
service of the plan — reaches its backend's rules of the run's level, and links the run
and its incident record like the run's own notices."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import outbox, testing
from controller.backends import Backends
from controller.journal import Journal
from controller.model import Notice, Phase
from controller.registry import step_kind
from controller.steps import StepContext
from tests.unit.test_engine import World, make_plan


def test_the_notify_step_lists_only_the_services_that_are_down() -> None:
    testing.reset()
    plan = make_plan()
    step = next(s for s in plan.spec.steps if s.action == "notify")
    backends = Backends(plan)
    ctx = StepContext(plan=plan, run_id="r1", level=1, backends=backends,
                      lookup_evidence=lambda r, s: {}, down=("hotline", "web"))
    kind = step_kind("notify")
    evidence = kind.apply(step, ctx, kind.plan(step, ctx).evidence)
    [sent] = backends.notifier(step.backend or "").sent()  # type: ignore[attr-defined]
    assert sent["affected"] == ["web", "hotline"]  # the plan's order, not the samples'
    assert evidence["recipients"] == sent["recipients"] == ["@all", "sms:broadcast"]


def test_the_notify_step_says_where_the_incident_record_is_as_the_runs_notices_do(
        journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a plan that keeps records, the notice the notify step sends links the run and
    names the incident record exactly like the notices the engine sends for the run."""
    told: list[Notice] = []
    monkeypatch.setattr(testing.FakeNotifier, "send",
                        lambda self, *, notice: told.append(notice))
    records = tmp_path / "records"
    plan = make_plan(lambda s: s.update(
        runUrl="https://ops.example.test/runs",
        records={"store": {"kind": "directory", "options": {"path": str(records)}}}))
    world = World(plan, journal)
    assert world.outage().phase is Phase.FAILED_OVER
    run = world.run()
    assert world.engine.notices.incidents is not None
    world.engine.notices.incidents.flush(30)
    outbox.settle()

    record = f"Incident record: {records}/incidents/memory-drill/{run.id}/"
    [stepped] = [n for n in told if n.subject == "[memory-drill] failover in progress"]
    assert stepped.body == record
    assert stepped.link == f"https://ops.example.test/runs/{run.id}"
    others = [n for n in told if n is not stepped]
    assert others and {(n.body, n.link) for n in others} == {(record, stepped.link)}
    assert (records / "incidents/memory-drill" / run.id).is_dir()  # and it is kept there

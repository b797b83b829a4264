"""The notify step names the services that are down, as the run's notices do — not every
service of the plan — and reaches its backend's rules of the run's level."""

from __future__ import annotations

from controller import testing
from controller.backends import Backends
from controller.registry import step_kind
from controller.steps import StepContext
from tests.unit.test_engine import make_plan


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

"""Per-level targets: a step that follows its level's targets is held to the tighter of its
own and its level's, the targets tighten as the level rises (audited), and the report
shows the level's target beside the step's own."""

from __future__ import annotations

from typing import Any

from controller import report, targets, testing
from controller.journal import Journal
from controller.model import Phase, Sample, StepStatus
from controller.plan import FailoverPlan
from tests.unit.test_engine import SERVICES, World, make_plan

LEVELS = [
    {"level": 1, "allServicesDown": True, "respondWithin": "5m", "fixWithin": "1h"},
    {"level": 2, "unavailableAtLeast": 50, "respondWithin": "30m", "fixWithin": "4h"},
    {"level": 3, "respondWithin": "8h", "fixWithin": "12h"},
]


def _plan() -> FailoverPlan:
    def mutate(spec: dict[str, Any]) -> None:
        spec["levels"] = LEVELS
        spec["steps"][3].update(approval=True, levelTarget="fix")  # link-test, own 2h
        spec["steps"][0].update(levelTarget="respond")  # notify-incident, own 10m
    return make_plan(mutate)


def test_a_step_is_held_to_the_tighter_of_its_own_and_its_levels_target() -> None:
    plan = _plan()
    notify, link = plan.spec.steps[0], plan.spec.steps[3]
    assert targets.effective(link, plan, 3) == 7200  # its own 2h is tighter than 12h
    assert targets.effective(link, plan, 1) == 3600  # level 1: fixed within 1h
    assert targets.effective(notify, plan, 1) == 300
    assert targets.effective(plan.spec.steps[1], plan, 1) == 3600  # no levelTarget: own
    assert targets.sentence(plan, 2) == "level 2 targets: respond 30m, fix 4h"
    assert targets.parse(targets.sentence(plan, 2)) == (2, 1800.0, 14400.0)
    assert targets.parse("level 2 -> 1") is None


def test_a_rising_level_tightens_the_targets_left_and_the_report_shows_both(
        journal: Journal) -> None:
    w = World(_plan(), journal)
    w.tick(True)
    testing.set_health("dc-a", False)
    state = None
    for _ in range(8):  # web and hotline down: 2 of 3 channels, level 2
        w.clock.advance(0.2)
        now = w.clock.now()
        state = w.engine.tick([Sample("web", False, now), Sample("api", True, now),
                               Sample("hotline", False, now)])
        if state.phase is Phase.AWAITING_APPROVAL:
            break
    run = w.run()
    assert run.level == 2
    for _ in range(4):  # every channel down: level 1
        w.clock.advance(0.2)
        now = w.clock.now()
        w.engine.tick([Sample(s, False, now) for s in SERVICES])
    assert w.run().level == 1
    held = [a["detail"] for a in journal.audit_trail(run_id=run.id)
            if a["action"] == "targets"]
    assert held == ["level 2 targets: respond 30m, fix 4h",
                    "level 1 targets: respond 5m, fix 1h"]
    w.clock.advance(90 * 60)  # the link test is approved 90 min in: within its own 2h,
    w.engine.approve(run.id, actor="oncall", step="link-test")  # past level 1's 1h
    assert w.engine.reconcile().phase is Phase.FAILED_OVER
    link = journal.step(run.id, "link-test")
    assert link.status is StepStatus.SUCCEEDED and link.met is False

    built = report.build(journal, run.id)
    assert built["levelTargets"] == {"level": 1, "respondSeconds": 300.0,
                                     "fixSeconds": 3600.0}
    shown = {s["name"]: (s["targetSeconds"], s.get("levelTargetSeconds"))
             for s in built["steps"]}
    assert shown["link-test"] == (7200.0, 3600.0)
    assert shown["notify-incident"] == (600.0, 300.0)
    assert shown["redirect-traffic"] == (3600.0, None)
    text = report.to_markdown(built)
    assert "- Level 1 targets: respond 5.0 min, fix 60.0 min" in text
    row = next(line for line in text.splitlines() if "| link-test |" in line)
    assert row.endswith("| 120.0 min | 60.0 min | **no** |")
    assert "target 120.0 min, level target 60.0 min" in report.to_junit(built)

"""Per-level targets: a run's steps held to their level's response and fix targets.

The handbook sets targets by level (L1 respond in 2 h / fix in 4 h, L2 4 h / 8 h, ...): a
plan gives them on its level rules (`levels[].respondWithin`, `fixWithin`) and marks the
steps they bind (`steps[].levelTarget: respond | fix`). Such a step is held to the tighter
of its own target and its level's (`effective`), so a level that rises mid-incident
tightens what is left. Which level targets a run is held to is audited when the run
starts and at every rise (action `targets`, `sentence`), and a report reads it back
(`parse`) to show the level's target beside each step's own; both directions live here so
the words never drift apart.
"""

from __future__ import annotations

import re

from controller.journal import Journal
from controller.plan import FailoverPlan, LevelRule, Step
from controller.schema import format_duration, parse_duration

ACTION = "targets"
_SENTENCE = re.compile(r"level (\d+) targets: respond (\S+), fix (\S+)\Z")


def of_level(plan: FailoverPlan, level: int | None) -> tuple[float | None, float | None]:
    """The (respond, fix) targets of `level` (None: the plan gives none)."""
    rule: LevelRule | None = plan.spec.rule(level)
    return (None, None) if rule is None else (rule.respond_within, rule.fix_within)


def level_target(step: Step, respond: float | None, fix: float | None) -> float | None:
    """The level's target that binds `step` (None: the step follows its own only)."""
    return {"respond": respond, "fix": fix, None: None}[step.level_target]


def effective(step: Step, plan: FailoverPlan, level: int | None) -> float | None:
    """The target `step` is held to at `level`: the tighter of its own and its level's."""
    bound = level_target(step, *of_level(plan, level))
    return min((t for t in (step.target, bound) if t is not None), default=None)


def held(step: Step, plan: FailoverPlan, level: int | None) -> Step:
    """`step` with the target it is held to at `level` (itself when it follows none)."""
    if step.level_target is None:
        return step
    return step.model_copy(update={"target": effective(step, plan, level)})


def binds(plan: FailoverPlan) -> bool:
    """Whether any step of the plan follows its level's targets."""
    return any(s.level_target is not None for s in plan.spec.steps)


def sentence(plan: FailoverPlan, level: int | None) -> str:
    """The audit detail: 'level 2 targets: respond 4h, fix 8h' ('-': none)."""
    respond, fix = of_level(plan, level)
    def text(t: float | None) -> str:
        return "-" if t is None else format_duration(t)
    return f"level {level if level is not None else '-'} targets: respond {text(respond)}, " \
           f"fix {text(fix)}"


def audit(journal: Journal, plan: FailoverPlan, run_id: str, level: int | None, *,
          at: float) -> None:
    """Record the level targets a failover is held to from now (when a step follows
    them): as it starts, and at each rise."""
    if binds(plan):
        held = sentence(plan, level)
        journal.audit(at=at, actor="controller", action=ACTION, plan=plan.name,
                      run_id=run_id, detail=held, keep=(held,))


def parse(detail: str) -> tuple[int, float | None, float | None] | None:
    """(level, respond, fix) from a `sentence` (None: not one)."""
    found = _SENTENCE.match(detail)
    if found is None:
        return None
    def seconds(text: str) -> float | None:
        return None if text == "-" else parse_duration(text)
    return int(found[1]), seconds(found[2]), seconds(found[3])

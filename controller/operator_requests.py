"""Whether a request annotation on a FailoverPlan can be acted on, and if not, why.

`failover.example.io/approve` (RUN, or RUN:STEP for a step that waits for an approval)
and `/done` (RUN:STEP, a human step) name a run and a step of the plan; the operator
checks them against its journal before it claims and acts on them, and answers one that
cannot be acted on with a Warning Event carrying the reason returned here: what is wrong
and what is allowed (the steps that wait, the active run). Pure reads of the journal.
"""

from __future__ import annotations

from controller.annotations import A_APPROVE, A_DONE
from controller.journal import Journal, Run
from controller.model import StepStatus


def _runs_note(journal: Journal, plan: str, run_id: str | None
               ) -> tuple[Run | None, str]:
    """The run an annotation names (when it is this plan's) and what the plan has."""
    run = journal.run(run_id) if run_id else None
    if run is not None and run.plan != plan:
        run = None
    active = journal.active_run(plan)
    has = f"the active run is {active.id}" if active else "no run of this plan is active"
    return run, has


def approve_problem(journal: Journal, plan: str, value: str) -> str | None:
    """Why `/approve: value` cannot be acted on, with what is allowed; None when it can."""
    run_id, _, step = value.strip().partition(":")
    run, has = _runs_note(journal, plan, run_id)
    form = f"{A_APPROVE} takes RUN (approve the run) or RUN:STEP (a step that waits for " \
           f"an approval); {has}"
    if not run_id or ":" in step:
        return f"malformed: {form}"
    if run is None:
        return f"plan {plan} has no run {run_id!r}; {form}"
    if run.finished_at is not None:
        return f"run {run_id} has finished ({run.outcome or run.phase.value}): an approval " \
               f"changes nothing; {has}"
    if step:
        gated = [d["name"] for d in run.steps if d.get("approval")]
        allowed = f"steps of run {run_id} that wait for an approval: " \
                  f"{', '.join(gated) or 'none'} (or approve the run itself: {run_id})"
        if step not in {d["name"] for d in run.steps}:
            return f"run {run_id} has no step {step!r}; {allowed}"
        if step not in gated:
            return f"step {step} of run {run_id} does not wait for an approval; {allowed}"
    return None


def done_problem(journal: Journal, plan: str, value: str) -> str | None:
    """Why `/done: value` cannot be acted on, with what is allowed; None when it can."""
    run_id, sep, step = value.strip().partition(":")
    run, has = _runs_note(journal, plan, run_id)
    if not (sep and run_id and step) or ":" in step:
        return f"malformed: {A_DONE} takes RUN:STEP, a human (manual) step of the run; {has}"
    if run is None:
        return f"plan {plan} has no run {run_id!r}; {A_DONE} takes RUN:STEP, a human " \
               f"(manual) step of the run; {has}"
    human = [d["name"] for d in run.steps if d.get("action") == "manual"]
    human += [r.name for r in journal.steps(run_id)  # and steps that asked for a person
              if r.status is StepStatus.AWAITING_PERSON and r.name not in human]
    allowed = f"human steps of run {run_id}: {', '.join(human) or 'none'}"
    actions = {d["name"]: d.get("action") for d in run.steps}
    if step not in actions:
        return f"run {run_id} has no step {step!r}; {allowed}"
    if step not in human:
        return f"step {step} of run {run_id} is not a human step (it is a {actions[step]} " \
               f"step, which the controller runs); {allowed}"
    return None

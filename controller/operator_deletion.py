"""What the deletion of a FailoverPlan waits for: the operator's finalizer and the run.

Owns the finalizer `failover.example.io/finalizer` and what a plan being deleted waits
for. Why each rule:

- **Placed with the first run, not the plan**: the finalizer goes on the object before
  a status showing a run is written, so before any step can start (`StatusWriter.
  mirror`: a step starts only once its record is written; an object already being
  deleted takes no new finalizer, and its run never starts). A plan that never runs is
  never held: its first status is its one write (a thousand new plans, a thousand
  writes, not two thousand), and it is deleted at once, its record kept under its name
  until a plan of that name is created again (`Operator._bind` retires it then).
- **Held while a run is active**: a finalizer holds a plan being deleted while a run is
  active, on whichever replica leads (the run is adopted from the status like any
  other); `done` and `approve` are still taken, the run finishes (a half-switched world
  is worse than a late delete), then the finalizer is removed. Meanwhile Ready is False
  (`Deleting`) and one DeletionDeferred Event, counted, says what the run waits for and
  the command that lets it go on (`waits_for`).
- **Withdrawn when nothing changed yet**: a run never approved, with no step started,
  has changed nothing, so it is closed (`withdraw`) instead of waited for.
- **An invalid plan cannot finish its run**: it is held all the same, and the Event says
  how to go on: correct the spec, or put the world back by hand and remove the finalizer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.annotations import A_APPROVE, A_DONE
from controller.crd import GROUP, KIND
from controller.journal import Journal, Run
from controller.model import Phase, StepStatus

log = logging.getLogger(__name__)

FINALIZER = f"{GROUP}/finalizer"


def held(obj: dict[str, Any]) -> bool:
    """Whether our finalizer is on the object."""
    return FINALIZER in (obj["metadata"].get("finalizers") or [])


def add_finalizer(obj: dict[str, Any]) -> None:
    finalizers = obj["metadata"].setdefault("finalizers", [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)


def drop_finalizer(obj: dict[str, Any]) -> None:
    obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers", [])
                                     if f != FINALIZER]


def waits_for(journal: Journal, name: str, run: Run) -> str:
    """What the deletion of `name` waits for, and how to let it go on."""
    steps = journal.steps(run.id)
    person = next((s.name for s in steps if s.status is StepStatus.AWAITING_PERSON), None)
    gated = next((s.name for s in steps if s.status is StepStatus.AWAITING_APPROVAL), None)
    running = next((s.name for s in steps if s.status in (
        StepStatus.RUNNING, StepStatus.UNKNOWN)), None)
    what = (f"its human step {person} waits for a person (then `kubectl annotate "
            f"fop/{name} {A_DONE}={run.id}:{person}`)" if person else
            f"its step {gated} waits for an approval (`kubectl annotate fop/{name} "
            f"{A_APPROVE}={run.id}:{gated}`)" if gated else
            f"its step {running} is running" if running else
            f"it waits for an approval (`kubectl annotate fop/{name} "
            f"{A_APPROVE}={run.id}`)" if not run.approved else "its next step is due")
    return (f"being deleted: the plan is removed once its {run.kind} run {run.id} has "
            f"finished (a half-switched world is worse than a late delete); {what}")


def invalid_waits(run: Run) -> str:
    """What an invalid plan being deleted waits for: its run cannot go on."""
    return (f"being deleted, but run {run.id} is active and the plan is invalid, so the "
            "run cannot go on: correct the spec (kubectl edit) and the run finishes, then "
            "the plan is removed; or put the world back by hand and remove the finalizer "
            f"{FINALIZER}")


def withdraw(journal: Journal, fence: Callable[[], None], name: str, run: Run,
             now: float) -> bool:
    """A run of a deleting plan that has not changed anything yet (not approved, no step
    started) is closed instead of waited for, under the leader's `fence`: True when it
    was."""
    if run.approved or any(s.status is not StepStatus.PENDING
                           for s in journal.steps(run.id)):
        return False
    fence()
    journal.update_run(run.id, phase=Phase.SUPERSEDED, finished_at=now,
                       outcome="withdrawn: the plan was deleted before the run was "
                               "approved; no step had run")
    log.warning("%s %s deleted: run %s withdrawn (never approved, no step ran)", KIND,
                name, run.id)
    return True

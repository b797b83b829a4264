"""Requests from outside on a FailoverPlan's annotations: validated, claimed, acted on.

Owns the annotations `failover.example.io/request` (failover or failback, with
`reason`, `requested-by`, `level` 1-4), `/approve` (a run id, optionally `RUN:STEP`, with
`approved-by`) and `/done` (`RUN:STEP`, with `done-by`), so kubectl and the CLI both
work (`Requests`). Why each rule:

- **Validated first**: each is checked against the journal (`approve_problem`,
  `done_problem`: pure reads) before anything is done, so a mistake is answered at once
  with what is wrong and what is allowed (the steps that wait, the active run).
- **Claimed before acted on**: the annotation is removed with a compare-and-swap write,
  fenced by the leader's token, before the engine acts on it; a concurrent change makes
  the claim fail (`Changed`) and nothing is acted on this cycle. So two replicas or two
  cycles never act on one request twice, and a deposed leader never takes a request
  away from its successor.
- **Never silently dropped**: one that cannot be acted on (a malformed kind or level, an
  unknown run or step, a step that is not a human step or does not wait for an
  approval, a failover on a plan being deleted) is removed all the same and answered
  with a Warning Event that names the annotation, its value and what is allowed.
- **A deletion finishes its run**: `done` and `approve` are still taken on a plan being
  deleted (they let its run finish); a new failover is not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller.annotations import (
    A_APPROVE,
    A_APPROVED_BY,
    A_BY,
    A_DONE,
    A_DONE_BY,
    A_LEVEL,
    A_REASON,
    A_REQUEST,
    request_problem,
)
from controller.crd import GROUP, KIND, PLURAL, VERSION
from controller.journal import Journal, Run
from controller.model import StepStatus
from controller.operator_status import PlanRuntime, StatusWriter
from controller.secrets import redact

_Check = Callable[[Journal, str, str], str | None]  # (journal, plan, RUN:STEP) -> problem
_Answer = Callable[[str, str, str], object]  # (run id, step, actor): the engine's call

log = logging.getLogger(__name__)

_REQUEST_KEYS = (A_REQUEST, A_REASON, A_BY, A_LEVEL)


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


class Changed(Exception):
    """A claim found the request annotations no longer as this reconcile read them (a
    person's new request, or a claim by an earlier cycle that this one's copy predates):
    nothing is claimed or acted on; the change brings the plan back to the queue. Not a
    Conflict: re-reading and re-applying the claim cannot succeed, it is the view that is
    old."""


class Requests:
    """Acts on a plan's request annotations for the operator, through its `StatusWriter`
    (fenced claims, Warning Events)."""

    def __init__(self, writer: StatusWriter) -> None:
        self.writer, self.journal = writer, writer.journal

    def act(self, rt: PlanRuntime, obj: dict[str, Any], *, deleting: bool) -> None:
        """Act on the request annotations, each validated, then claimed (removed), then
        acted on. One that cannot be acted on (a malformed kind or level, an unknown run
        or step, not a human step, a failover on a plan being deleted) is removed all the
        same and answered with a Warning Event naming it, its value and what is allowed.
        `done` and `approve` are taken on a deleting plan too: they finish its run."""
        notes = obj["metadata"].get("annotations") or {}
        name = rt.plan.name
        if A_REQUEST in notes:
            refused = request_problem(notes)
            if refused is None and deleting:
                refused = (A_REQUEST, notes[A_REQUEST],
                           "the plan is being deleted: no new run starts on it")
            self.claim(name, notes, _REQUEST_KEYS)
            kind = notes[A_REQUEST].strip()
            level = notes.get(A_LEVEL, "").strip()
            try:
                if refused is None:
                    rt.engine.request(kind, actor=notes.get(A_BY, "kubectl"),
                                      reason=notes.get(A_REASON, f"{A_REQUEST} annotation"),
                                      level=int(level) if level and kind == "failover"
                                      else None)
            except ValueError as exc:
                refused = (A_REQUEST, notes[A_REQUEST], str(exc))
            if refused is not None:
                self._refuse(obj, "BadRequest", *refused)
        answers: list[tuple[str, str, _Check, _Answer, str]] = [
            (A_APPROVE, A_APPROVED_BY, approve_problem,
             lambda run_id, step, actor: rt.engine.approve(run_id, actor=actor, step=step),
             "ApprovalRefused"),
            (A_DONE, A_DONE_BY, done_problem,
             lambda run_id, step, actor: rt.engine.done(run_id, step, actor=actor),
             "DoneRefused")]
        for annotation, by, check, answer, refusal in answers:
            if annotation in notes:
                self._answer(obj, name, notes, annotation, by, check, answer, refusal)

    def _answer(self, obj: dict[str, Any], name: str, notes: dict[str, str], annotation: str,
                by: str, check: _Check, answer: _Answer, refusal: str) -> None:
        """A person's answer to a step (`RUN:STEP`: approve it, or say its manual work is
        done): claimed, checked, given to the engine, or refused with an Event."""
        value = notes[annotation]
        self.claim(name, notes, (annotation, by))
        problem = check(self.journal, name, value)
        run_id, _, step = value.strip().partition(":")
        try:
            if problem is None:
                answer(run_id, step, notes.get(by, "kubectl"))
        except (PermissionError, LookupError) as exc:
            problem = str(exc)
        if problem is not None:
            self._refuse(obj, refusal, annotation, value, problem)

    def _refuse(self, obj: dict[str, Any], reason: str, annotation: str, value: str,
                problem: str) -> None:
        message = f"annotation {annotation}={value!r} removed and not acted on: {problem}"
        log.warning("%s %s: %s", KIND, obj["metadata"]["name"], redact(message))
        self.writer.event(obj, "Warning", reason, message)

    def claim(self, name: str, seen: dict[str, str], keys: tuple[str, ...]) -> None:
        """Remove the annotations we are about to act on, only if they are still as seen:
        a concurrent change raises `Changed` and nothing is acted on this cycle. Only the
        leader claims (a deposed one would take a request away from its successor)."""

        def mutate(obj: dict[str, Any]) -> None:
            notes = obj["metadata"].get("annotations") or {}
            if any(notes.get(k) != seen.get(k) for k in keys):
                raise Changed(f"{KIND} {name}: its request annotations changed since this "
                              "cycle read them; nothing claimed, acting on them next cycle")
            for k in keys:
                notes.pop(k, None)

        self.writer.elector.fence()
        self.writer.fenced(name, lambda fencing: self.writer.kube.update(
            GROUP, VERSION, self.writer.namespace, PLURAL, name, mutate, fencing=fencing))

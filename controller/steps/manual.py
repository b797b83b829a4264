"""The `manual` step: work people do (a phone call, a switch in a cabinet), and a person
asked for in the middle of another step (`PersonNeeded`).

Owns the human step's params. The run opens it and waits for a person to mark it done
(`waits_for_person`); with `parallel: true` it is opened when the run starts and the
automatic steps go on while people work. The controller never applies it itself.

A step of another kind that finds it cannot go on without a person (the promote step,
when the old primary cannot be reached and the plan names no fencing command) raises
`PersonNeeded` from `apply`: the executor records it `awaiting-person` with the question
(`evidence.person`: why, what to do, the `failoverctl done RUN STEP` to type, until
when), the run waits as for a human step, and once a person says done the step's next
`apply` finds who and when in `change["person"]` (`confirmed`). No one within the wait:
the step fails with the state the kind named. Why one exception rather than a second
human-step kind: the person is needed only sometimes, in the middle of work the
controller does, and the step must go on from there.
"""

from __future__ import annotations

from controller.model import Evidence, PermanentError
from controller.plan import FailoverPlan, Step, Strict
from controller.steps import StepContext, StepKind


class ManualParams(Strict):
    instructions: str = ""


class Manual(StepKind[ManualParams]):
    action = "manual"
    Params = ManualParams
    waits_for_person = True

    def instructions(self, step: Step) -> str:
        return self.args(step).instructions or step.description

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        return f"human step: {self.instructions(step)}"

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        raise PermanentError(f"step {step.name} is done by people: mark it done "
                             "(failoverctl done), the controller never runs it")


KIND = Manual()


class PersonNeeded(PermanentError):
    """A step cannot go on until a person says done: `str(self)` says why and what to do
    (and the command to type); `wait` seconds later without one the step fails with
    `expired` (a named state first). Permanent: where nothing records the question, the
    step fails rather than going on unconfirmed."""

    def __init__(self, message: str, *, wait: float, expired: str):
        super().__init__(message)
        self.wait, self.expired = wait, expired

    def asked(self, now: float) -> Evidence:
        """The question as the step's record keeps it (`evidence.person`)."""
        return {"why": str(self), "askedAt": now, "until": now + self.wait,
                "expired": self.expired}


def confirmed(change: Evidence) -> Evidence | None:
    """The person's answer handed to a step that asked (`by`, `at`), or None."""
    person = change.get("person") or {}
    return {"by": person["confirmedBy"], "at": person["confirmedAt"]} \
        if person.get("confirmedBy") else None

"""The `manual` step: work people do (a phone call, a switch in a cabinet).

Owns the human step's params. The run opens it and waits for a person to mark it done
(`waits_for_person`); with `parallel: true` it is opened when the run starts and the
automatic steps go on while people work. The controller never applies it itself.
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

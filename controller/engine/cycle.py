"""What one engine cycle did, as data: the result of `Engine.tick` and `Engine.reconcile`.

A cycle decides (`Decided`), may answer a request it cannot run (`Refused`), start a run
(`Started`, with its origin: a threshold trip, or who requested it and why), run steps
(`Ran`), stop at a run or step that waits for someone (`Waiting`, with what it waits for)
and end a run (`Ended`); a controller that does not hold the plan stands by (`StoodBy`).
Callers print or act on these events, never on the sentences the engine writes for people
(`failoverctl run` says "waiting for approval", not the policy's "still tripped", while a
run waits).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from controller.journal import PlanState
from controller.model import Decision, Origin, Phase, StepStatus


class WaitFor(enum.StrEnum):
    """Why a run stopped: an approval (`failoverctl approve`) or a person finishing a
    human step (`failoverctl done`). Both show as phase AwaitingApproval."""

    APPROVAL = "approval"
    PERSON = "person"


@dataclass(frozen=True, slots=True)
class Decided:
    decision: Decision


@dataclass(frozen=True, slots=True)
class Refused:
    kind: str  # failover | failback
    why: str


@dataclass(frozen=True, slots=True)
class Started:
    run_id: str
    kind: str
    origin: Origin  # a threshold trip, a clear, or who requested it and why


@dataclass(frozen=True, slots=True)
class Ran:
    run_id: str
    step: str
    status: StepStatus


@dataclass(frozen=True, slots=True)
class Waiting:
    run_id: str
    on: WaitFor
    step: str = ""  # "" for an approval of the whole run

    def command(self, where: str = "") -> str:
        """The command that lets the run go on (`where`: e.g. `--plan FILE`)."""
        if self.on is WaitFor.PERSON:
            said = f"failoverctl done {self.run_id} {self.step}"
        else:
            said = f"failoverctl approve {self.run_id}" + (f" --step {self.step}"
                                                           if self.step else "")
        return f"{said} {where}".rstrip()


@dataclass(frozen=True, slots=True)
class Ended:
    run_id: str
    phase: Phase  # FailedOver, Healthy (a failback) or Failed
    outcome: str


@dataclass(frozen=True, slots=True)
class StoodBy:
    why: str  # another controller holds the plan


Event = Decided | Refused | Started | Ran | Waiting | Ended | StoodBy


@dataclass(frozen=True)
class Cycle:
    """The events of one cycle, in order (none: nothing to do), and the plan's state after
    it (`phase` and `last_decision` are read through for callers that watch the phase)."""

    state: PlanState
    events: tuple[Event, ...] = field(default=())

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def last_decision(self) -> str | None:
        return self.state.last_decision

    @property
    def decision(self) -> Decision | None:
        return next((e.decision for e in self.events if isinstance(e, Decided)), None)

    @property
    def waiting(self) -> Waiting | None:
        return next((e for e in self.events if isinstance(e, Waiting)), None)

"""Step kinds: what each `action:` of a plan's step is, in one module per kind.

Owns the contract every step kind fulfils and the lazy registry that finds a kind by its
action name. A kind (`StepKind`) says everything the rest of the controller needs to
know about its steps, so no other module switches on the action:

- **`Params`**: the pydantic model of the step's `params:`; plan validation parses the
  step's params with it and keeps the result (`StepKind.args(step)`), and `check` adds
  what needs the whole plan (a backend of the right role, a site of this plan).
- **Plan, then apply** (the external-dns split): `plan` is read-only and returns a
  `Change`: what a dry run shows (`summary`) and the evidence a revert needs (the
  original), which the executor journals *before* `apply` runs, so a revert after a crash
  still restores the true original. `apply` changes the world and is idempotent: run
  twice (a retry, a resumed step), it leaves the same state. Every write a backend makes
  is preceded by `fencing.check()`; pauses inside a step are `fencing.pause`.
- **`revert`** undoes a step from its journaled evidence; only a `revertible` kind has
  one (it is what a failback and `onFailure: revert` run).
- **What the loop needs**: `continues_on_failure` (a failed notice never stops a run),
  `waits_for_person` (the step is done by people, not by `apply`), `planned` (false for
  steps the controller generates itself, such as a failback's reverts).
- **`readiness`**: the read-only checks that say the backup site could run this step now.

Why one module per kind: a new kind is one new file here, `controller/steps/<action>.py`
defining `KIND`; `controller.registry.step_kind` finds it by its action and imports it
only when a plan uses it (like the providers' `KINDS`). A kind defined elsewhere (a
test's toy kind) is added with `registry.register_step`.

Why two faces: the registry sits below the plan, so what it hands out is the untyped
face `controller.step_kind.StepKindProtocol` (with `Change` and `Readiness`, re-exported
here); `StepKind` below is the typed base, and `step_kind` here returns it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from controller import registry
from controller.model import Evidence, PermanentError
from controller.step_kind import Change as Change
from controller.step_kind import Readiness as Readiness

if TYPE_CHECKING:
    from controller.backends import Backends
    from controller.plan import FailoverPlan, PlanSpec, ProbeSpec, Step

P = TypeVar("P", bound=BaseModel)


def seconds(value: float | None) -> str:
    """A duration in a report: '0.42 s' under two minutes, then '1h 5m' ('-': none)."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.2f} s"
    from controller.plan import format_duration

    return format_duration(round(value))


@dataclass
class StepContext:
    """What a step runs against: the plan, the run, the backends, earlier evidence."""

    plan: FailoverPlan
    run_id: str
    level: int | None
    backends: Backends
    lookup_evidence: Callable[[str, str], Evidence]  # (run_id, step name) -> evidence
    down: tuple[str, ...] = ()  # the services down when the run's steps run


@dataclass(frozen=True)
class CheckContext:
    """What a readiness check reads: the plan, its backends, and now (epoch seconds)."""

    plan: FailoverPlan
    backends: Backends
    now: float


class NotRevertible(PermanentError):
    pass


class StepKind(ABC, Generic[P]):
    """The base every kind extends; the defaults fit a kind that writes nothing to revert."""

    action: ClassVar[str]
    Params: type[P]
    role: ClassVar[str | None] = None  # the role of the backend its steps must name
    revertible: ClassVar[bool] = False
    continues_on_failure: ClassVar[bool] = False
    waits_for_person: ClassVar[bool] = False
    planned: ClassVar[bool] = True

    def args(self, step: Step) -> P:
        """The step's params as this kind's model (parsed once, kept on the step)."""
        parsed = step.args
        if not isinstance(parsed, self.Params):
            parsed = self.Params.model_validate(step.params)
            step.args = parsed
        return parsed

    def check(self, step: Step, spec: PlanSpec) -> None:
        """What the params alone cannot say (sites, services, timeouts of this plan):
        raise ValueError('params.FIELD: what is wrong; the fix')."""

    def facts(self, evidence: Evidence) -> list[str]:
        """What a report shows of a finished step, one line per fact, from its evidence."""
        return []

    def warnings(self, step: Step, spec: PlanSpec | None = None) -> list[str]:
        """What `failoverctl validate` warns of but accepts: 'params.FIELD: the risk; the
        fix', with `spec` what the whole plan makes of the step (a plan setting may make
        the kind refuse it in `check` instead)."""
        return []

    def probes(self, step: Step) -> list[tuple[str, ProbeSpec]]:
        """The probes the step runs, as (path under the step, spec), validated with the
        plan's other probes."""
        return []

    def instructions(self, step: Step) -> str:
        """What a person is asked to do, for a kind that `waits_for_person`."""
        return step.description

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        """One line saying what the step would do, for previews."""
        return f"{self.action} via {step.backend}" if step.backend else self.action

    def plan(self, step: Step, ctx: StepContext) -> Change:
        """Read-only: the world before the step, and what would change."""
        return Change()

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        """What the executor journals before `apply`: `plan`'s evidence (the simulation
        wraps this call to note what a step read before it wrote)."""
        return self.plan(step, ctx).evidence

    @abstractmethod
    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        """Change the world; `change` is the evidence `plan` returned, as journaled."""

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        raise NotRevertible(f"step {step.name}: a {self.action} step cannot be reverted")

    def readiness(self, step: Step, ctx: CheckContext) -> list[Readiness]:
        return []


def backend_of(step: Step) -> str:
    """The step's backend name (plan validation makes sure a kind with a role has one)."""
    if step.backend is None:
        raise PermanentError(f"step {step.name}: no backend configured")
    return step.backend


def step_kind(action: str) -> StepKind[Any]:
    """The kind of `action`, typed (`registry.step_kind`, checked to extend StepKind);
    UnknownAction names the choices."""
    kind = registry.step_kind(action)
    if not isinstance(kind, StepKind):
        raise TypeError(f"step kind {action!r} is a {type(kind).__name__}; a step kind "
                        "extends controller.steps.StepKind")
    return kind

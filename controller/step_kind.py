"""What a step kind is to the modules that find it by name: the interface below the plan.

Owns `StepKindProtocol`, the face of a step kind that `controller.registry` hands out
(and so what the plan's validation and the engine call), and the two values a kind
returns that name nothing of the plan (`Change`, `Readiness`). Why each rule:

- **Below the plan, so no cycle**: the plan validates each step with its kind, and a
  kind takes the plan's models. The registry (imported by the plan) and the kinds
  (`controller.steps`, above the plan) both import this module, and it imports neither
  the plan nor the kinds, so every import points down.
- **The plan's models are `Any` here, on purpose**: a step, a plan, a step context
  cannot be named at this layer without importing the plan. `controller.steps.StepKind`
  is the typed base every kind extends (it documents each member) and
  `controller.steps.step_kind` hands out that type; code above the steps that wants its
  arguments checked takes the kind from there.
- **Read-only members**: a kind's flags (`revertible`, `waits_for_person`...) are
  properties here, so a kind may set them as class attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from controller.model import Evidence


@dataclass(frozen=True)
class Change:
    """What `plan` found: `evidence` (journaled before `apply`; what a revert needs) and
    `summary`, the before -> after a dry run shows ("-" when the kind cannot tell)."""

    evidence: Evidence = field(default_factory=dict)
    summary: str = "-"


Readiness = tuple[str, Callable[[], str]]
"""A named read-only check: returns what it found, raises when the site is not ready."""


class StepKindProtocol(Protocol):
    """A step kind as the registry hands it out (`controller.steps.StepKind` documents
    each member); `step`, `spec`, `plan` and `ctx` are the plan's `Step`, `PlanSpec`,
    `FailoverPlan` and the steps' `StepContext`/`CheckContext`."""

    @property
    def action(self) -> str: ...
    @property
    def role(self) -> str | None: ...
    @property
    def revertible(self) -> bool: ...
    @property
    def continues_on_failure(self) -> bool: ...
    @property
    def waits_for_person(self) -> bool: ...
    @property
    def planned(self) -> bool: ...

    def args(self, step: Any) -> BaseModel: ...
    def check(self, step: Any, spec: Any) -> None: ...
    def facts(self, evidence: Evidence) -> list[str]: ...
    def warnings(self, step: Any, spec: Any = None) -> list[str]: ...
    def probes(self, step: Any) -> list[tuple[str, Any]]: ...
    def instructions(self, step: Any) -> str: ...
    def describe(self, step: Any, plan: Any) -> str: ...
    def plan(self, step: Any, ctx: Any) -> Change: ...
    def prepare(self, step: Any, ctx: Any) -> Evidence: ...
    def apply(self, step: Any, ctx: Any, change: Evidence) -> Evidence: ...
    def revert(self, step: Any, ctx: Any, evidence: Evidence) -> Evidence: ...
    def readiness(self, step: Any, ctx: Any) -> list[Readiness]: ...

"""A traffic step run through the real `Traffic` handler over one backend under test.

The contract tests use it to drive prepare, perform and revert exactly as the executor
does, on whatever backend the fixture built (memory, HAProxy, a mesh object), without a
plan file: the step names its `to` and `weights`, so the sites come from the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from controller.model import Evidence
from controller.plan import Step
from controller.steps import StepContext
from controller.steps.traffic import Traffic
from controller.traffic import TrafficBackend


class _OneBackend:
    def __init__(self, backend: TrafficBackend):
        self.backend = backend

    def traffic(self, name: str) -> TrafficBackend:
        return self.backend

    def probe(self, owner: str, spec: Any) -> Any:
        raise AssertionError("these steps have no check")


@dataclass
class TrafficStep:
    step: Step
    ctx: StepContext

    @classmethod
    def over(cls, backend: TrafficBackend, *, primary: str, backup: str,
             **params: Any) -> TrafficStep:
        step = Step.model_validate({"name": "shift", "action": "traffic", "backend": "edge",
                                    "params": {"to": backup, **params}})
        sites = SimpleNamespace(primary=SimpleNamespace(name=primary),
                                backup=SimpleNamespace(name=backup))
        plan: Any = SimpleNamespace(spec=SimpleNamespace(sites=sites))
        return cls(step, StepContext(plan=plan, run_id="r", level=1,
                                     backends=_OneBackend(backend),  # type: ignore[arg-type]
                                     lookup_evidence=lambda run, step: {}))

    def prepare(self) -> Evidence:
        return Traffic().prepare(self.step, self.ctx)

    def perform(self, prepared: Evidence) -> Evidence:
        """As the executor records it: the result, with what prepare saved on top."""
        return {**Traffic().apply(self.step, self.ctx, prepared), **prepared}

    def revert(self, evidence: Evidence) -> Evidence:
        return Traffic().revert(self.step, self.ctx, evidence)

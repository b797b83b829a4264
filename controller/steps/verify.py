"""The `verify` step: every probe of the named services (default: all core) must pass.

Owns the verification gate of a run. A failed probe fails the attempt, and the executor
retries it until the step's timeout, which makes the step a wait-until-healthy gate; it
writes nothing, so there is nothing to revert.
"""

from __future__ import annotations

from pydantic import Field

from controller.model import Evidence
from controller.plan import FailoverPlan, PlanSpec, Step, Strict
from controller.probing import probe_once
from controller.steps import StepContext, StepKind


class VerifyParams(Strict):
    services: list[str] = Field(default_factory=list)


class Verify(StepKind[VerifyParams]):
    action = "verify"
    Params = VerifyParams

    def services(self, step: Step, plan: FailoverPlan) -> list[str]:
        return self.args(step).services or [s.name for s in plan.spec.services if s.core]

    def check(self, step: Step, spec: PlanSpec) -> None:
        have = {s.name for s in spec.services}
        for name in self.args(step).services:
            if name not in have:
                raise ValueError(f"params.services: no service named {name!r} "
                                 f"(have: {', '.join(sorted(have))})")

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        return "verify " + ", ".join(self.services(step, plan))

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        samples = probe_once(ctx.plan, ctx.backends, self.services(step, ctx.plan))
        results = [{"service": s.service, "ok": s.ok, "detail": s.detail} for s in samples]
        failed = [r for r in results if not r["ok"]]
        if failed:
            raise AssertionError("verification failed: " + "; ".join(
                f"{r['service']}: {r['detail'] or 'probe failed'}" for r in failed))
        return {"checked": results}

    def facts(self, evidence: Evidence) -> list[str]:
        return [f"{c['service']}: {'ok' if c['ok'] else 'FAILED'} {c['detail']}"
                for c in evidence.get("checked", [])]


KIND = Verify()

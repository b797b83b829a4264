"""The `notify` step: tell the people of the run's level (or the step's recipients).

The routes are the run notices' (`notices.routes`: the rules of exactly the run's level;
a run without a level, e.g. a planned failover, goes to every rule).

Owns the notice a run sends as one of its steps. Like the run's own notices it links the
run (`runUrl`) and, when the plan keeps records, says where the run's incident record is
kept (`controller.records.incident`: a notify step only runs in a failover, which has
one). A notice that cannot be sent never stops the run (`continues_on_failure`): the
failover matters more than the message about it, and the failure is recorded on the step.
"""

from __future__ import annotations

from pydantic import Field

from controller import notices
from controller.model import Evidence, Notice
from controller.plan import Step, Strict
from controller.records.incident import location, prefix
from controller.steps import StepContext, StepKind, backend_of


class NotifyParams(Strict):
    recipients: list[str] = Field(default_factory=list)
    subject: str | None = None
    status: str | None = None
    estimated_recovery: str | None = Field(None, alias="estimatedRecovery")


class Notify(StepKind[NotifyParams]):
    action = "notify"
    Params = NotifyParams
    role = "notifier"
    continues_on_failure = True

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        p, plan, records = self.args(step), ctx.plan, ctx.plan.spec.records
        recipients = p.recipients or [
            r for n in notices.routes(plan, ctx.level, notifier=backend_of(step))
            for r in n.recipients]
        record = location(records, prefix(plan.name, ctx.run_id)) if records else ""
        notice = Notice(
            plan=plan.name, level=ctx.level,
            subject=p.subject or f"[{plan.name}] failover in progress",
            status=p.status or "failing over to the backup site",
            affected=notices.affected(plan, ctx.down),
            estimated_recovery=p.estimated_recovery or "",
            run_id=ctx.run_id, recipients=tuple(recipients),
            link=notices.run_link(plan.spec.run_url, ctx.run_id),
            body=notices.record_line(record),
        )
        ctx.backends.notifier(backend_of(step)).send(notice=notice)
        return {"recipients": recipients, "level": ctx.level}

    def facts(self, evidence: Evidence) -> list[str]:
        if "recipients" not in evidence:
            return []
        return [f"level {evidence.get('level')} to {', '.join(evidence['recipients']) or '-'}"]


KIND = Notify()

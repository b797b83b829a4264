"""What a notice says and to whom: content, routing and de-duplication, without I/O.

The loop decides *when* people are told (a run starts, each step finishes, the level
rises, the run ends) and `outbox` does the sending; this module decides *what*
each notice says and *where* it goes, as pure functions, so that every rule of the
emergency plans' "notification by level" is unit-tested on its own:

- `routes`: the plan's `notifications` rules for a level, by exact level match as the
  plan writes them (a run without a level goes to every rule);
- `affected`: the services actually down, in plan order, not every service of the plan;
- `estimate_recovery`: when recovery is expected, from the remaining steps' time targets
  (measured from detection, like every target) and the run's progress so far;
- `step_status`, `person_needed`, `started`, `escalated`, `completed`, `failed`: one
  stable sentence per update, so it can be de-duplicated and derived again from the
  record (`person_needed`: a step that stopped mid-step to ask a person, with what is
  needed and the command that says it is done);
- `compose`: the notice itself, with where the run's incident record is kept (its
  body) when the plan keeps records (`controller.records.incident`);
- `dedup_key` / `decided` / `attempted`: the same run, status text and route give the
  same key. Each notice is written to the journal's audit as `notify-pending` (with its
  key and status) when it is decided, before anyone is told, and as `notify` or
  `notify-failed` when it was sent or given up; so a notice is sent once, even by a
  controller restarted in the middle of a run, and one decided just before a crash is
  still sent (`undelivered`);
- `lifecycle`: the start, level and end updates a run's record says it has had, so a
  notice lost between writing the run and writing its `notify-pending` row is found.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from controller.journal import Run
from controller.model import Notice, Phase, StepRecord, StepStatus
from controller.plan import FailoverPlan, Notification
from controller.registry import find_step_kind

FINISHED = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.REVERTED)
_KEY = re.compile(r"\[notice ([0-9a-f]{16})\]")
PENDING = "notify-pending"
REPLAY_WITHIN = 3600.0  # a restarted controller still tells of runs that ended this recently
NOTICE_ACTIONS = ("notify", "notify-failed")  # attempted: sent, or given up
_PENDING = re.compile(r"(?P<route>.*?) queued \[notice (?P<key>[0-9a-f]{16})\]: (?P<status>.*)\Z",
                      re.S)
_ESCALATED = re.compile(r"level \S+ -> (\d+)\Z")


def routes(plan: FailoverPlan, level: int | None, *,
           notifier: str | None = None) -> list[Notification]:
    """The rules that apply to a run at `level` (of one `notifier`, if given): its level's,
    and with `escalation: upward` every less severe level's too, each route once.
    A run without a level (a planned failover requested without `--level`) is told
    calmly: the rules of the least severe level configured (the highest number), never
    every route at once."""
    rules = [r for r in plan.spec.notifications if notifier in (None, r.notifier)]
    if level is None:
        level = max((r.level for r in rules), default=None)
        return [r for r in rules if r.level == level]
    return [r for r in plan.spec.reached(level) if notifier in (None, r.notifier)]


def affected(plan: FailoverPlan, down: Iterable[str]) -> tuple[str, ...]:
    """The plan's services that are down, in the plan's order (signals are not services)."""
    names = set(down)
    return tuple(s.name for s in plan.spec.services if s.name in names)


def span(seconds: float) -> str:
    """A duration for people: '1h 58m', '12m 34s', '45m', '30s'."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def clock(at: float) -> str:
    """An instant to the minute, as the incident record wants it: '2023-11-14 22:13 UTC'."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


@dataclass(frozen=True)
class Estimate:
    """When recovery is expected: `at` (epoch s, None = unknown), the steps left, how far
    the finished steps ran past their targets, and whether every remaining target passed."""

    at: float | None
    remaining: int
    behind: float = 0.0
    overdue: bool = False

    def text(self, now: float) -> str:
        left = f"{self.remaining} step{'s' if self.remaining != 1 else ''} left"
        if self.remaining == 0:
            return "now: no steps left"
        if self.at is None:
            return f"unknown: the remaining steps have no time target ({left})"
        if self.overdue:
            return (f"overdue: the remaining steps' targets have passed; expected as soon "
                    f"as they finish ({left})")
        late = f", running {span(self.behind)} behind target" if self.behind > 0 else ""
        return f"by {clock(self.at)} (in {span(self.at - now)}; {left}{late})"


def estimate_recovery(steps: Iterable[StepRecord], *, detected_at: float,
                      now: float) -> Estimate:
    """Expected recovery from the remaining steps' time targets and the run's progress.

    Targets are measured from detection, so the run is due when its last remaining
    target falls due: `detected_at + max(remaining targets)`. If finished steps ran
    late, the rest will likely run as late: the estimate moves by the worst lateness
    seen so far. It is never earlier than `now`; past it, the estimate is `overdue`.
    """
    steps = list(steps)
    remaining = [s for s in steps if s.status not in FINISHED]
    lateness = [s.since_detection_s - s.target_s for s in steps
                if s.status in FINISHED and s.target_s is not None
                and s.since_detection_s is not None]
    behind = max([0.0, *lateness])
    if not remaining:
        return Estimate(now, 0, behind)
    targets = [s.target_s for s in remaining if s.target_s is not None]
    if not targets:
        return Estimate(None, len(remaining), behind)
    due = detected_at + max(targets) + behind
    return Estimate(max(due, now), len(remaining), behind, overdue=due < now)


def recovery_text(run: Run, steps: Iterable[StepRecord], *, now: float) -> str:
    """The notice's 'estimated recovery' line for a run in any phase."""
    if run.phase is Phase.FAILED:
        return "unknown: the run failed; people take over (see the runbook)"
    if run.finished_at is not None:
        return f"recovered: the {run.kind} finished at {clock(run.finished_at)}"
    return estimate_recovery(steps, detected_at=run.detected_at, now=now).text(now)


def run_link(base: str | None, run_id: str) -> str:
    """`<base>/<run id>`, or '' when the plan gives no `runUrl`."""
    return f"{base.rstrip('/')}/{quote(run_id, safe='')}" if base else ""


def step_status(rec: StepRecord) -> str:
    """One sentence about a finished step; it only depends on the stored record, so the
    same step gives the same text after a restart (and is de-duplicated)."""
    known = find_step_kind(rec.action)
    by_person = known is not None and known.waits_for_person
    who = f" by {rec.approved_by}" if by_person and rec.approved_by else ""
    if rec.status is StepStatus.SUCCEEDED:
        when = ""
        if rec.since_detection_s is not None:
            when = f" {span(rec.since_detection_s)} after detection"
            if rec.target_s is not None:
                verdict = "met" if rec.met else "MISSED"
                when += f" (target {span(rec.target_s)} {verdict})"
        verb = "done" if by_person else "succeeded"
        return f"step {rec.name} {verb}{who}{when}"
    if rec.status is StepStatus.FAILED:
        return f"step {rec.name} FAILED: {rec.error or 'no detail'}"
    return f"step {rec.name} {rec.status.value}"


def person_needed(rec: StepRecord) -> str | None:
    """One sentence for a step waiting for a person it asked for mid-step (`PersonNeeded`,
    kept in `evidence.person`): why, what to do and the command to type, as the step said
    it, and when it asked, so each question is told once and a later one again; None for
    any other record (a manual step's people know it from the plan)."""
    asked = rec.evidence.get("person") if rec.status is StepStatus.AWAITING_PERSON else None
    if not asked:
        return None
    return f"step {rec.name} needs a person (asked {clock(asked['askedAt'])}): {asked['why']}"


def compose(plan: FailoverPlan, run: Run, status: str, *, steps: Iterable[StepRecord],
            down: Iterable[str], now: float, record: str = "") -> Notice:
    """The notice for `status` of `run` (without recipients: each route adds its own);
    `record`: where the run's incident record is kept, when the plan keeps records."""
    return Notice(
        body=record_line(record),
        plan=plan.name, level=run.level,
        subject=f"[{plan.name}] level {run.level or '-'} {run.kind}",
        status=status, affected=affected(plan, down),
        estimated_recovery=recovery_text(run, steps, now=now),
        run_id=run.id, link=run_link(plan.spec.run_url, run.id), at=now,
    )


def record_line(record: str) -> str:
    """A notice's body naming where the run's incident record is kept ('' when none)."""
    return f"Incident record: {record}" if record else ""


def dedup_key(run_id: str, status: str, rule: Notification) -> str:
    """Same run + same status text + same route (notifier and recipients) -> same key."""
    raw = json.dumps([run_id, status, rule.notifier, list(rule.recipients)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def tag(key: str) -> str:
    """How a key is written at the end of an audit detail."""
    return f"[notice {key}]"


def attempted(trail: Iterable[Mapping[str, Any]]) -> set[str]:
    """Keys of the notices already attempted (delivered or failed) in an audit trail."""
    keys: set[str] = set()
    for row in trail:
        if row.get("action") in NOTICE_ACTIONS:
            keys.update(_KEY.findall(str(row.get("detail", ""))))
    return keys


def within(rule: Notification, run: Run, now: float) -> str:
    """For a rule with a time target (`within: 30m`): ' (within 30m: met)' or MISSED."""
    if rule.within is None:
        return ""
    verdict = "met" if now - run.detected_at <= rule.within else "MISSED"
    return f" (within {span(rule.within)} of detection: {verdict})"


# --- the updates of a run, and the outbox rows ------------------------------------------------


def started(run: Run) -> str:
    """"failover started: requested by alice: dc-a power work" for a requested run, the
    policy's sentence ("failover started: tripped: ...") for one the policy started."""
    return f"{run.kind} started: {run.origin.text()}"


def escalated(level: int) -> str:
    return f"escalated to level {level}"


def completed(kind: str, outcome: str, site: str) -> str:
    return f"{kind} complete: {outcome}; active site {site}"


def failed(kind: str, outcome: str) -> str:
    return f"{kind} FAILED: {outcome}"


def lifecycle(plan: FailoverPlan, run: Run, trail: Iterable[Mapping[str, Any]]) -> list[str]:
    """The start, level and end updates the run's record says it has had, in order: a
    run with steps started; each `escalate` row of its audit raised the level; a run that
    finished FailedOver (failover) or Healthy (failback) completed, and one the engine
    failed (outcome "step X failed: ...") FAILED. A run answered as refused (no steps),
    superseded or closed by someone else announced nothing of the kind."""
    if not run.steps:
        return []
    out = [started(run)]
    for row in trail:
        if row.get("action") == "escalate" and row.get("run_id") == run.id:
            match = _ESCALATED.search(str(row.get("detail", "")))
            if match:
                out.append(escalated(int(match.group(1))))
    if run.finished_at is not None and run.outcome is not None:
        sites = plan.spec.sites
        done = Phase.FAILED_OVER if run.kind == "failover" else Phase.HEALTHY
        if run.phase is done:
            site = sites.backup.name if run.kind == "failover" else sites.primary.name
            out.append(completed(run.kind, run.outcome, site))
        elif run.phase is Phase.FAILED and run.outcome.startswith("step "):
            out.append(failed(run.kind, run.outcome))
    return out


def route(rule: Notification) -> str:
    """How a route is named in the audit: 'im -> @all, sms:broadcast'."""
    return f"{rule.notifier} -> {', '.join(rule.recipients) or 'default'}"


def pending_detail(rule: Notification, key: str, status: str) -> str:
    """The audit detail of a decided notice: route, key, then the full status."""
    return f"{route(rule)} queued {tag(key)}: {status}"


def parse_pending(detail: str) -> tuple[str, str, str] | None:
    """(route, key, status) of a `notify-pending` detail; None if it is not one."""
    match = _PENDING.match(detail)
    return (match["route"], match["key"], match["status"]) if match else None


def decided(trail: Iterable[Mapping[str, Any]]) -> set[str]:
    """Keys of the notices decided (queued, sent or given up) in an audit trail."""
    keys: set[str] = set()
    for row in trail:
        if row.get("action") == PENDING:
            parsed = parse_pending(str(row.get("detail", "")))
            if parsed:
                keys.add(parsed[1])
        elif row.get("action") in NOTICE_ACTIONS:
            keys.update(_KEY.findall(str(row.get("detail", ""))))
    return keys


def undelivered(trail: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The `notify-pending` rows whose notice was neither sent nor given up, oldest
    first, one per key: what a controller that stopped before sending left to send."""
    rows = list(trail)
    done = attempted(rows)
    out: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row.get("action") == PENDING:
            parsed = parse_pending(str(row.get("detail", "")))
            if parsed and parsed[1] not in done and parsed[1] not in out:
                out[parsed[1]] = row
    return list(out.values())

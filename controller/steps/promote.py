"""The `promote` step: promote the backup site's PostgreSQL streaming standby, after
fencing the old primary, so there are never two writable primaries.

Owns the promotion's order and decisions; the `database` backend (`controller.db`) owns
how each node is reached. In order, each phase timed in the evidence:

1. **check**: the standby is in recovery. With the old primary answering, the standby must
   be streaming from it (`standby-not-streaming`) and its lag (bytes: the primary's LSN
   minus the standby's replay LSN; seconds: the standby's replay lag, or the primary's
   view of it from the plan's PostgreSQL probe, `lagProbe`, whichever is larger) within
   the step's RPO budget (`lag-over-budget`); with the primary gone, the standby's replay
   lag is what can be measured. Readiness checks the same. A refusal changes nothing and
   names its state. A fallback to a restore is a second plan (a restore plan's
   `failover`), started after the refusal: the engine has no step that runs only when an
   earlier one failed, and `onFailure: continue` with a restore step after this one would
   restore after a successful promotion too.
2. **fence** the old primary first: `ssh-stop` (its postmaster stopped by PID) or `sql`
   (read-only, sessions ended); when that cannot reach it, the plan's STONITH command
   (`fence.command`); without a command, a person: the step asks for one (`PersonNeeded`:
   it waits `awaiting-person`, saying the old primary cannot be reached, how to fence it
   by hand and the `failoverctl done RUN STEP` to type) and goes on once someone says
   done; no one within `fence.confirmTimeout`: it fails `fence-unconfirmed`, never
   promoting. A plan may instead keep a human step named `fence.confirmStep` (default
   `fence-primary`) before this one (the older form: that step waits for a person even
   when the automatic fence would work; `validate` warns). How it was fenced is recorded.
3. **catch up**: with the primary's last LSN known, wait (`timeouts.catchUp`) until the
   standby has replayed it, so a fenced primary's last writes are not lost. A crashed
   primary's last checkpoint is that LSN; the end of its WAL (`walEnd`, read by the
   fence after a crash) counts in the data lost, not in the wait: the standby cannot
   receive WAL from a dead primary.
4. **promote**, then confirm it: out of recovery, on the next timeline; the state and
   the plan's validation queries are read in the promotion's own session (one psql).
   Then the promoted node gets a physical replication slot for the old primary
   (`failback.slot`, in the evidence): it keeps the WAL since the fork for the failback,
   which streams the old primary through it.
5. **validate**: the plan's queries' answers against what they expect.

The standby is read once an attempt: `prepare` hands its reading to the `apply` that
follows it in the same attempt (same step context, at most `FRESH` seconds old, used
once); a retried or resumed attempt reads it again. A standby that turns out not to be
in recovery when promoted (`NotInRecovery`) is judged as one found so at the start.

How the database comes home afterwards is `params.failback` (the `db-failback` step a
failback starts with: `controller.steps.db_failback`).

Evidence: the LSN reached, the primary's last known LSN, where it was read
(`primaryLastLsnFrom`) and the data lost (`rpoBytes`, `rpoSeconds` against the budget),
the fence, each phase's seconds. Not revertible (a promoted standby is not un-promoted):
`prepare` journals the standby's timeline before anything changes, so a resumed or retried
attempt that finds it out of recovery on a later timeline records the promotion as done
(`alreadyPromoted`) instead of promoting twice.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from functools import partial

from pydantic import Field

from controller import fencing
from controller.backends import Backends
from controller.db import (
    Database,
    FenceMethod,
    Node,
    NodeState,
    NotInRecovery,
    Unreachable,
    lsn_text,
    parse_lsn,
    state_or_none,
)
from controller.model import Evidence, PermanentError, Sample
from controller.plan import FailoverPlan, PlanSpec, ProbeSpec, Step
from controller.schema import Duration, PositiveDuration, Strict
from controller.steps import (
    Change,
    CheckContext,
    Readiness,
    StepContext,
    StepKind,
    backend_of,
    seconds,
)
from controller.steps.manual import PersonNeeded, confirmed

PHASES = ["check", "fence", "catchUp", "promote", "validate"]
POLL = 0.05  # seconds between the standby's readings while it catches up
FRESH = 2.0  # seconds prepare's reading of the standby may serve the apply after it
PROBE_TIMEOUT = 30.0  # the lag probe's own timeout ends it sooner


class FenceParams(Strict):
    method: FenceMethod = FenceMethod.SSH_STOP
    command: list[str] | None = Field(None, min_length=1, description="STONITH hook (argv, "
                                      "run on the controller's host) for a primary that "
                                      "cannot be reached")
    dry_run: bool = Field(False, alias="dryRun", description="readiness runs the command "
                          "with a --dry-run argument")
    confirm_step: str = Field("fence-primary", alias="confirmStep", description="the older "
                              "form, when the plan has a manual step of this name before "
                              "this one: a person confirmed the fence there, before this "
                              "step ran (without it, this step asks a person only when the "
                              "old primary cannot be reached)")
    confirm_timeout: PositiveDuration = Field(3600.0, alias="confirmTimeout",
                                              description="how long the step waits for a "
                                              "person to confirm the fence of an old "
                                              "primary it cannot reach; then it fails "
                                              "(fence-unconfirmed), never promoting")


class Validation(Strict):
    name: str = Field(min_length=1)
    query: str = Field(min_length=1)
    expect: str | None = None


class Timeouts(Strict):
    promote: PositiveDuration = 60.0
    catch_up: Duration = Field(10.0, alias="catchUp")


class FailbackSettings(Strict):
    """How the failback (`db-failback`) brings the database home after this promotion."""

    fence: FenceMethod = Field(FenceMethod.SSH_STOP, description="how the promoted node "
                               "is fenced before the old primary is promoted again: "
                               "ssh-stop (a clean stop: it then follows without a rewind) "
                               "or sql")
    catch_up: Duration = Field(300.0, alias="catchUp", description="how long the old "
                               "primary may take to stream up to the promoted node (lag "
                               "0), and to replay its last LSN once it is fenced")
    stall: PositiveDuration = Field(30.0, description="how long a rewound node may "
                                    "replay nothing more, before it has caught up, "
                                    "before it is rebuilt from a base backup instead "
                                    "(the WAL it needs is gone at its source)")
    slot: str = Field("failover_failback", pattern=r"^[a-z0-9_]{1,63}$", description="the "
                      "physical replication slot a promotion makes on the promoted node "
                      "for the node it replaced: it keeps the WAL written since, which the "
                      "old primary needs to be rewound and stream home however long the "
                      "incident wrote (readiness reports what it keeps)")


class PromoteParams(Strict):
    standby: Node
    primary: Node
    rpo: Duration = Field(30.0, description="the most replication lag (seconds) to promote "
                          "with")
    rpo_bytes: int | None = Field(None, alias="rpoBytes", ge=0, description="the most lag "
                                  "in bytes, when the primary answers")
    fence: FenceParams = Field(default_factory=FenceParams)
    validation: list[Validation] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    slot_limit: int = Field(1 << 30, alias="slotLimit", ge=0, description="readiness: the "
                            "most WAL (bytes) a replication slot may keep on the primary")
    lag_probe: ProbeSpec | None = Field(None, alias="lagProbe", description="a postgres "
                                        "probe of the primary with `standby:`: its lag "
                                        "reading joins the decision")
    failback: FailbackSettings = Field(default_factory=FailbackSettings)


class Refused(PermanentError):
    """The standby may not be promoted now; `state` names why."""

    def __init__(self, state: str, message: str):
        super().__init__(f"{state}: {message}")
        self.state = state


class Promote(StepKind[PromoteParams]):
    action = "promote"
    Params = PromoteParams
    role = "database"

    def check(self, step: Step, spec: PlanSpec) -> None:
        p = self.args(step)
        if p.fence.method is FenceMethod.COMMAND and not p.fence.command:
            raise ValueError("params.fence.command: method command needs the command (argv "
                             "of the STONITH hook)")
        if p.failback.fence is FenceMethod.COMMAND:
            raise ValueError("params.failback.fence: the promoted node is fenced by ssh-stop "
                             "or sql before the failback promotes the old primary (the "
                             "failback reads its last LSN then; a STONITH command gives "
                             "none); choose one of those")
        confirm = p.fence.confirm_step
        human = next((s for s in spec.steps if s.name == confirm), None)
        if p.fence.command or human is None:
            return
        names = [s.name for s in spec.steps]
        before = names[:names.index(step.name)] if step.name in names else names
        if human.action != "manual" or confirm not in before or human.parallel:
            raise ValueError(
                f"params.fence.confirmStep: step {confirm!r} confirms the fence only as a "
                f"manual step (not parallel) before step {step.name!r}; remove it (this "
                "step then asks a person itself when the old primary cannot be reached), "
                "or make it such a step")

    def probes(self, step: Step) -> list[tuple[str, ProbeSpec]]:
        spec = self.args(step).lag_probe
        return [("params.lagProbe", spec)] if spec is not None else []

    def warnings(self, step: Step, spec: PlanSpec | None = None) -> list[str]:
        p = self.args(step)
        out = [] if p.validation else ["params.validation: no validation query: the "
                                       "promoted data is never checked; add a query"]
        if spec is None:
            return out
        if _legacy_confirm(step, spec):
            out.append(f"params.fence.confirmStep: the human step {p.fence.confirm_step!r} "
                       "waits for a person even when the old primary is fenced without "
                       f"one; remove it: step {step.name!r} asks a person only when it "
                       "cannot reach the old primary")
        cooldown, back = spec.trigger.cooldown, p.failback.catch_up
        if cooldown < back:
            out.append(f"params.failback.catchUp: a database failback may take "
                       f"{seconds(back)}, longer than the plan's cooldown "
                       f"(spec.trigger.cooldown {seconds(cooldown)}): a probe blip right "
                       "after a failback trips again before the standby has caught up, and "
                       f"the new promotion refuses; set the cooldown to at least "
                       f"{seconds(back)}")
        return out

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        p = self.args(step)
        return (f"promote standby {p.standby.describe()} after fencing "
                f"{p.primary.describe()} ({p.fence.method.value}"
                f"{', else a command' if p.fence.command else ', else ask a person'}) "
                f"via {step.backend}")

    def plan(self, step: Step, ctx: StepContext) -> Change:
        try:
            return Change(evidence=self.prepare(step, ctx), summary=self._preview(step, ctx))
        except Unreachable as exc:
            return Change(summary=f"cannot read the standby: {exc}")

    def _preview(self, step: Step, ctx: StepContext) -> str:
        p = self.args(step)
        db = database_of(step, ctx)
        standby = db.state(p.standby)
        if not standby.in_recovery:
            return f"{p.standby.describe()} is not in recovery (timeline {standby.timeline})"
        return (f"{p.standby.describe()} timeline {standby.timeline} at "
                f"{lsn_text(standby.lsn)}, lag {standby.lag_seconds:.1f} s (budget "
                f"{p.rpo:g} s) -> primary on timeline {standby.timeline + 1}")

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        """The standby as it is before anything changes (journaled): what tells a resumed
        attempt that the promotion landed."""
        standby = database_of(step, ctx).state(self.args(step).standby)
        _READINGS.keep(ctx, step, standby)
        return {"standbyBefore": {"inRecovery": standby.in_recovery,
                                  "timeline": standby.timeline, "lsn": lsn_text(standby.lsn)}}

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        p = self.args(step)
        db = database_of(step, ctx)
        clock = _Phases()
        standby = _READINGS.take(ctx, step) or db.state(p.standby)
        before = change.get("standbyBefore") or {}
        if not standby.in_recovery:
            return _found_promoted(db, p, standby, before, clock)
        primary = state_or_none(db, p.primary)
        lag = _lag(p, standby, primary, _probed(ctx.backends, step, p, primary))
        clock.done("check")
        fence = _fence(db, p)
        if "how" not in fence:  # it cannot be reached and the plan names no command
            fence = _by_person(p, step, ctx, change, fence["unreachable"])
        clock.done("fence")
        last = parse_lsn(fence["lastLsn"]) if fence.get("lastLsn") else (
            None if primary is None else primary.lsn)
        standby = _catch_up(db, p, standby, last)
        clock.done("catchUp")
        fencing.check()
        try:
            promoted = db.promote(p.standby, timeout=p.timeouts.promote,
                                  queries=[q.query for q in p.validation])
        except NotInRecovery:
            return _found_promoted(db, p, db.state(p.standby), before, clock)
        after = promoted.state
        if after.in_recovery or after.timeline <= standby.timeline:
            raise PermanentError(f"promotion of {p.standby.describe()} did not land: in "
                                 f"recovery {after.in_recovery}, timeline {after.timeline} "
                                 f"(was {standby.timeline})")
        clock.done("promote")
        slot = _failback_slot(db, p)
        reached = standby.lsn
        end = parse_lsn(fence["walEnd"]) if fence.get("walEnd") else last
        out: Evidence = {
            "fence": fence, "timeline": after.timeline, "lsnReached": lsn_text(reached),
            "primaryLastLsn": None if end is None else lsn_text(end),
            "primaryLastLsnFrom": _last_from(fence, end),
            "rpoBytes": None if end is None else max(0, end - reached),
            "rpoSeconds": round(lag, 3), "rpoBudgetSeconds": p.rpo, "slot": slot,
        }
        out["validation"] = _judge(p, promoted.values, clock)
        out["phases"] = clock.spent
        return out

    def readiness(self, step: Step, ctx: CheckContext) -> list[Readiness]:
        p = self.args(step)
        db = database_of(step, ctx)
        checks: list[Readiness] = [
            ("standby streaming within budget", partial(_ready_standby, ctx.backends, step)),
            ("fence path", partial(db.check_fence, p.primary, method=p.fence.method,
                                   command=p.fence.command, dry_run=p.fence.dry_run))]
        if p.fence.command and p.fence.method is not FenceMethod.COMMAND:
            checks.append(("fence command", partial(
                db.check_fence, p.primary, method=FenceMethod.COMMAND,
                command=p.fence.command, dry_run=p.fence.dry_run)))
        return [*checks, ("replication slots", partial(_ready_slots, db, p))]

    def facts(self, evidence: Evidence) -> list[str]:
        if "timeline" not in evidence:
            return []
        if evidence.get("alreadyPromoted"):
            out = [f"found promoted already (timeline {evidence['timeline']}): recorded "
                   "done, not promoted again"]
        else:
            fence = evidence.get("fence", {})
            out = [f"old primary fenced by {fence.get('how', '-')}; promoted to timeline "
                   f"{evidence['timeline']} at {evidence.get('lsnReached')}",
                   f"primary's last LSN {evidence.get('primaryLastLsn') or 'unknown'} "
                   f"({evidence.get('primaryLastLsnFrom', '-')}): "
                   f"{evidence.get('rpoBytes', '-')} bytes lost, lag "
                   f"{seconds(evidence.get('rpoSeconds'))} (budget "
                   f"{seconds(evidence.get('rpoBudgetSeconds'))})"]
        phases = evidence.get("phases", {})
        if phases:
            out.append("phases: " + ", ".join(f"{k} {seconds(v)}" for k, v in phases.items()))
        out += [f"validation {q['name']}: {q['value']} "
                f"({'passed' if q['passed'] else 'FAILED'})"
                for q in evidence.get("validation", [])]
        return out


KIND = Promote()


class _Readings:
    """prepare's reading of the standby, kept for the apply that follows it in the same
    attempt: same step context (held weakly), same step, used once, at most `FRESH`
    seconds old."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str],
                         tuple[weakref.ref[StepContext], float, NodeState]] = {}

    def keep(self, ctx: StepContext, step: Step, state: NodeState) -> None:
        self._kept = {k: v for k, v in self._kept.items() if v[0]() is not None}
        self._kept[(id(ctx), step.name)] = (weakref.ref(ctx), time.monotonic(), state)

    def take(self, ctx: StepContext, step: Step) -> NodeState | None:
        kept = self._kept.pop((id(ctx), step.name), None)
        if kept is None or kept[0]() is not ctx or time.monotonic() - kept[1] > FRESH:
            return None
        return kept[2]


_READINGS = _Readings()


def _found_promoted(db: Database, p: PromoteParams, standby: NodeState, before: Evidence,
                    clock: _Phases) -> Evidence:
    """The standby is out of recovery: promoted by an earlier attempt of this step (it was
    in recovery when prepare read it, and is on a later timeline now), else refused."""
    if before.get("inRecovery") and standby.timeline > int(before["timeline"]):
        return {"alreadyPromoted": True, "timeline": standby.timeline,
                "lsnReached": lsn_text(standby.lsn), "slot": _failback_slot(db, p),
                "validation": _validate(db, p, clock), "phases": clock.spent}
    raise Refused("not-a-standby", f"{p.standby.describe()} is not in recovery (timeline "
                  f"{standby.timeline}) and this step did not promote it: it is a primary "
                  "already; refusing to promote")


def _failback_slot(db: Database, p: PromoteParams) -> Evidence:
    """The promoted node's slot for the old primary (kept for the failback)."""
    fencing.check()
    return {**db.create_slot(p.standby, p.failback.slot), "node": p.standby.describe()}


class _Phases:
    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._at = time.monotonic()

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[phase] = round(now - self._at, 3)
        self._at = now


def database_of(step: Step, ctx: StepContext | CheckContext) -> Database:
    """The step's `database` backend."""
    return ctx.backends.database(backend_of(step))



def _probed(backends: Backends, step: Step, p: PromoteParams,
            primary: NodeState | None) -> Sample | None:
    """The plan's lag probe, run once while the primary answers (None: no probe, or no
    primary to ask)."""
    if p.lag_probe is None or primary is None:
        return None
    probe = backends.probe(f"{step.name}-lag", p.lag_probe)

    async def once() -> Sample:
        try:
            return await asyncio.wait_for(probe.check(), PROBE_TIMEOUT)
        finally:
            await probe.aclose()

    return asyncio.run(once())


def _lag(p: PromoteParams, standby: NodeState, primary: NodeState | None,
         probed: Sample | None = None) -> float:
    """The lag the decision goes by (seconds), refusing a standby that may not be
    promoted: one not streaming from a primary that answers, one over the budget."""
    where = p.standby.describe()
    lag = standby.lag_seconds
    if primary is not None:
        if not standby.streaming or (probed is not None and probed.value is None
                                     and not probed.ok):
            seen = "" if probed is None or probed.ok else f" (lag probe: {probed.detail})"
            raise Refused("standby-not-streaming", f"{where} does not stream from the "
                          f"primary {p.primary.describe()}, which answers{seen}: its data is "
                          "of unknown age; restore instead, or repair replication first")
        if probed is not None and probed.value is not None:
            lag = max(lag, probed.value)
        behind = max(0, primary.lsn - standby.lsn)
        if p.rpo_bytes is not None and behind > p.rpo_bytes:
            raise Refused("lag-over-budget", f"{where} is {behind} bytes behind the primary "
                          f"(budget {p.rpo_bytes} bytes, params.rpoBytes)")
    if lag > p.rpo:
        raise Refused("lag-over-budget", f"{where} lags {lag:.1f} s behind (budget "
                      f"{p.rpo:g} s, params.rpo): promoting would lose more than the budget "
                      "allows")
    return lag


def _fence(db: Database, p: PromoteParams) -> Evidence:
    """Fence the old primary: the plan's method, else its command; without a command, a
    primary that cannot be reached is left to a person (no `how`: `_by_person`)."""
    f = p.fence
    if f.method is not FenceMethod.COMMAND:
        try:
            fencing.check()
            done = db.fence(p.primary, method=f.method)
            return {**done, "how": f.method.value}
        except Unreachable as exc:
            unreachable = str(exc)
    else:
        unreachable = "the plan fences it by command"
    if f.command:
        fencing.check()
        done = db.fence(p.primary, method=FenceMethod.COMMAND, command=f.command)
        return {**done, "how": f"command {f.command[0]}", "unreachable": unreachable}
    return {"unreachable": unreachable}


def _by_person(p: PromoteParams, step: Step, ctx: StepContext, change: Evidence,
               unreachable: str) -> Evidence:
    """A person fences it: one who confirmed it in the plan's human step before this
    one, or one this step asks (`PersonNeeded`), found in `change` once they said done."""
    f = p.fence
    if _legacy_confirm(step, ctx.plan.spec):
        return {"how": f"a person (step {f.confirm_step})", "unreachable": unreachable}
    person = confirmed(change)
    if person is not None:
        return {"how": f"a person ({person['by']}, said done)", "unreachable": unreachable,
                "confirmedAt": person["at"]}
    where = p.primary.describe()
    raise PersonNeeded(
        f"the old primary {where} cannot be reached ({unreachable}) and the plan names no "
        f"fencing command (params.fence.command): stop it by hand so it cannot take "
        f"writes (power off its host, or stop PostgreSQL there), then say so: failoverctl "
        f"done {ctx.run_id} {step.name} (--plan PLAN or fop/NAME); the step waits at "
        f"most {seconds(f.confirm_timeout)} and never promotes before",
        wait=f.confirm_timeout,
        expired=f"fence-unconfirmed: no one confirmed the fence of {where} within "
                f"{seconds(f.confirm_timeout)} (params.fence.confirmTimeout); not promoted: "
                "fence it, then fail over again, or name a STONITH hook in "
                "params.fence.command")


def _legacy_confirm(step: Step, spec: PlanSpec) -> bool:
    """The plan confirms the fence in a human step before this one (the older form)."""
    confirm = KIND.args(step).fence.confirm_step
    return any(s.name == confirm and s.action == "manual" for s in spec.steps)


def _last_from(fence: Evidence, end: int | None) -> str:
    """Where the primary's last LSN (the data lost is counted against it) was read."""
    if fence.get("lastLsnFrom"):
        return str(fence["lastLsnFrom"])
    if fence.get("lastLsn"):
        return f"the fence ({fence.get('how', '-')})"
    return "unknown" if end is None else "the primary's current LSN, read before the fence"


def _catch_up(db: Database, p: PromoteParams, standby: NodeState,
              last: int | None) -> NodeState:
    """Wait until the standby has replayed the fenced primary's last LSN (at most
    `timeouts.catchUp`); the standby as it is then."""
    if last is None:
        return standby
    deadline = time.monotonic() + p.timeouts.catch_up
    while standby.lsn < last and time.monotonic() < deadline:
        fencing.pause(POLL)
        standby = db.state(p.standby)
    return standby


def _validate(db: Database, p: PromoteParams, clock: _Phases) -> list[Evidence]:
    return _judge(p, [db.query(p.standby, q.query) for q in p.validation], clock)


def _judge(p: PromoteParams, values: list[str], clock: _Phases) -> list[Evidence]:
    """Each validation query's answer against what it expects; raises when one fails."""
    results: list[Evidence] = [{"name": q.name, "value": value,
                                "passed": q.expect is None or value == q.expect}
                               for q, value in zip(p.validation, values, strict=True)]
    clock.done("validate")
    failed = [r for r in results if not r["passed"]]
    if failed:
        raise AssertionError("validation failed on the promoted node: " + "; ".join(
            f"{r['name']} returned {r['value']!r}" for r in failed))
    return results


def _ready_standby(backends: Backends, step: Step) -> str:
    p = KIND.args(step)
    db = backends.database(backend_of(step))
    standby, primary = db.state(p.standby), db.state(p.primary)
    if not standby.in_recovery:
        raise RuntimeError(f"{p.standby.describe()} is not in recovery: not a standby")
    if standby.timeline != primary.timeline:
        raise RuntimeError(f"{p.standby.describe()} is on timeline {standby.timeline}, the "
                           f"primary on {primary.timeline}: rebuild the standby")
    probed = _probed(backends, step, p, primary)
    lag = _lag(p, standby, primary, probed)
    return (f"{p.standby.describe()} streaming on timeline {standby.timeline}, "
            f"{max(0, primary.lsn - standby.lsn)} bytes and {lag:.1f} s behind "
            f"(budget {p.rpo:g} s)" + ("" if probed is None else f"; {probed.detail}"))


def _ready_slots(db: Database, p: PromoteParams) -> str:
    """No slot keeps more WAL than `slotLimit` on the primary, nor on a promoted standby.
    The failback slot on a promoted standby, unused while the old primary is down or
    being rebuilt, is expected (it keeps the WAL the failback needs): reported with what
    it keeps, not judged."""
    standby = state_or_none(db, p.standby)
    promoted = standby is not None and standby.writable
    try:
        slots = db.slots(p.primary)
    except Unreachable:
        if not promoted:
            raise
        slots = []  # the old primary is down: the promoted node's slots are what count
    kept = []
    if promoted:
        for s in db.slots(p.standby):
            if s.name == p.failback.slot and not s.active:
                kept.append(f"slot {s.name} on {p.standby.describe()} keeps "
                            f"{s.retained_bytes} bytes of WAL for the rebuild of "
                            f"{p.primary.describe()} (expected until the failback)")
            else:
                slots.append(s)
    bloated = [s for s in slots if s.retained_bytes > p.slot_limit]
    if bloated:
        raise RuntimeError("replication slots keep too much WAL: " + ", ".join(
            f"{s.name} {s.retained_bytes} bytes{'' if s.active else ' (inactive)'}"
            for s in bloated) + f" (limit {p.slot_limit}, params.slotLimit)")
    return "; ".join([f"{len(slots)} slot(s), each within {p.slot_limit} bytes", *kept])

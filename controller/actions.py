"""What each step action does: prepare (read-only, saved first), perform, revert.

`prepare` captures the world before the first change (traffic weights, DNS records) and
the executor writes it to the journal *before* `perform` runs, so a revert after a crash
still restores the true original. `perform` is idempotent: run twice, it leaves the same
state and does not fail because the first run already succeeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controller.backends import Backends
from controller.dns import DnsConflict
from controller.model import Evidence, Notice, PermanentError, Record, Sample, Target, Weights
from controller.plan import FailoverPlan, Step, TrafficParams


@dataclass
class StepContext:
    plan: FailoverPlan
    run_id: str
    level: int | None
    backends: Backends
    lookup_evidence: Callable[[str, str], Evidence]  # (run_id, step name) -> evidence


class NotRevertible(PermanentError):
    pass


class Handler(Protocol):
    def prepare(self, step: Step, ctx: StepContext) -> Evidence: ...
    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence: ...
    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence: ...


class _NoRevert:
    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        raise NotRevertible(f"step {step.name}: a {step.action} step cannot be reverted")


class Traffic:
    """Instant cutover by default. A stepped shift (`params.steps`, e.g. [10, 50, 100])
    sends that percentage of the traffic to the target at each step, waits `pause`, then
    runs the `check` probe against the backup; a failed check shifts back to the original
    weights (saved by `prepare`) and fails the step, naming the percentage and the reason.
    A retried stepped shift resumes at the step the traffic has already reached."""

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        return {"before": ctx.backends.get(_backend(step)).current()}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        sites = ctx.plan.spec.sites
        to = str(step.params.get("to", sites.backup.name))
        weights = step.params.get("weights") or {to: 100, sites.primary.name: 0}
        params = TrafficParams.model_validate(step.params)
        backend = ctx.backends.get(_backend(step))
        if not params.steps:
            return dict(backend.shift(to=to, weights=weights))
        original = dict(prepared.get("before") or backend.current())
        reached = _share(backend.current(), to, weights)
        probe = ctx.backends.probe(f"{step.name}-check", params.check) if params.check else None
        pause = STEP_PAUSE if params.pause is None else params.pause
        done: list[Evidence] = []
        result: Evidence = {}
        for pct in params.steps:
            if pct < reached:  # a retry: this step was passed before the interruption
                continue
            result = dict(backend.shift(to=to, weights=_step_weights(pct, to, weights,
                                                                     original)))
            record: Evidence = {"percent": pct, "weights": result.get("after")}
            if "observed" in result:
                record["observed"] = result["observed"]
            done.append(record)
            time.sleep(pause)
            if probe is None:
                continue
            sample = _run_check(probe)
            record["check"] = sample.detail or ("ok" if sample.ok else "failed")
            if not sample.ok:
                assert params.check is not None
                why = (f"step {step.name}: the {params.check.kind} check failed at {pct}% "
                       f"to {to}: {sample.detail or 'probe failed'}")
                try:
                    backend.revert(to=original)
                except Exception as exc:
                    raise PermanentError(f"{why}; shifting back to {original} also failed: "
                                         f"{exc}") from None
                raise PermanentError(f"{why}; traffic shifted back to {original}")
        return {**result, "steps": done}

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        if "before" not in evidence:
            raise NotRevertible(f"step {step.name}: no saved weights to revert to")
        return dict(ctx.backends.get(_backend(step)).revert(to=evidence["before"]))


STEP_PAUSE = 2.0  # seconds at each step of a stepped shift when the plan gives no pause
CHECK_TIMEOUT = 30.0  # a stepped shift's check that has not answered by then has failed


def _share(weights: Weights, to: str, named: Weights) -> float:
    """Percent of the weight among the `named` destinations that `to` carries now."""
    total = sum(weights.get(k, 0) for k in named)
    return 100.0 * weights.get(to, 0) / total if total else 0.0


def _step_weights(pct: int, to: str, final: Weights, original: Weights) -> Weights:
    """`pct` % to the target; the rest shared by the other named destinations in the
    proportions they had originally (equally if none carried weight). 100 % = `final`."""
    if pct >= 100:
        return dict(final)
    others = [k for k in final if k != to]
    base = {k: original.get(k, 0) for k in others}
    if not sum(base.values()):
        base = dict.fromkeys(others, 1)
    total = sum(base.values())
    return {to: pct, **{k: round((100 - pct) * base[k] / total) for k in others}}


def _run_check(probe: Any) -> Sample:
    """Run one probe once on a private event loop (perform runs in a worker thread)."""

    async def once() -> Sample:
        try:
            return await asyncio.wait_for(probe.check(), CHECK_TIMEOUT)
        except Exception as exc:
            return Sample(getattr(probe, "service", "check"), False, time.time(),
                          detail=f"{type(exc).__name__}: {exc}" if str(exc) else
                          f"no answer within {CHECK_TIMEOUT:g} s")
        finally:
            close = getattr(probe, "aclose", None)
            if close is not None:
                await close()

    return asyncio.run(once())


def dns_records(step: Step) -> list[Record]:
    try:
        return [Record.from_json({"ttl": 300, **r}) for r in step.params["records"]]
    except (KeyError, TypeError) as exc:
        raise PermanentError(
            f"step {step.name}: params.records must list {{name, type, ttl, values}} ({exc})"
        ) from None


class Dns:
    def _current(self, step: Step, ctx: StepContext, keys: set[tuple[str, str]]) -> list[Record]:
        provider = ctx.backends.get(_backend(step))
        names = sorted({k[0] for k in keys})
        return [r for r in provider.records(names=names) if r.key() in keys]

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        keys = {r.key() for r in dns_records(step)}
        return {"before": [r.to_json() for r in self._current(step, ctx, keys)]}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        desired = dns_records(step)
        evidence = self._swap(step, ctx, [Record.from_json(r) for r in prepared["before"]],
                              desired)
        if step.params.get("linkTest"):  # after the all-server verification, never on revert
            evidence["linkTest"] = _link_test(step, desired)
        return evidence

    def _swap(self, step: Step, ctx: StepContext, expected: list[Record],
              desired: list[Record]) -> Evidence:
        keys = {r.key() for r in desired}
        current = {r.key(): set(r.values) for r in self._current(step, ctx, keys)}
        provider = ctx.backends.get(_backend(step))
        if all(current.get(r.key()) == set(r.values) for r in desired):
            # a resumed step whose write landed before the crash: still prove it is served
            verify = getattr(provider, "verify", None)
            proof = dict(verify(desired=desired)) if verify is not None else {}
            return {"after": [r.to_json() for r in desired], "alreadyApplied": True, **proof}
        try:
            return dict(provider.apply(expected=expected, desired=desired))
        except DnsConflict as exc:
            raise PermanentError(f"DNS changed under us: {exc}") from None

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        before = [Record.from_json(r) for r in evidence.get("before", [])]
        if not before:
            raise NotRevertible(f"step {step.name}: no saved records to revert to")
        return self._swap(step, ctx, dns_records(step), before)


def _link_test(step: Step, desired: list[Record]) -> Evidence:
    """Reach the service through the new address (controller.dns.linktest); raises
    LinkTestFailed, which the executor retries within the step's budget."""
    from controller.dns.linktest import run_link_test
    from controller.plan import DnsParams, link_record

    params = DnsParams.model_validate(step.params)
    spec = link_record(params)
    assert params.link_test is not None and spec is not None  # checked by plan validation
    key = Record(spec.name, spec.type, spec.ttl, tuple(spec.values)).key()
    record = next(r for r in desired if r.key() == key)
    return run_link_test(params.link_test, record)


class Restore(_NoRevert):
    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        return {}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        from controller.backups.selection import choose

        p = step.params
        try:
            store_name, dataset, into = p["store"], p["dataset"], p["into"]
        except KeyError as exc:
            raise PermanentError(f"step {step.name}: params.{exc.args[0]} is required") from None
        store = ctx.backends.get(store_name)
        backup, why = choose(store.list(dataset=dataset))
        target = Target(host=into.get("host"), path=into["path"], options=into.get("options", {}))
        evidence = dict(ctx.backends.get(_backend(step)).restore(backup=backup, into=target))
        return {"chosen": backup.id, "kind": backup.kind, "why": why, **evidence}


class Verify(_NoRevert):
    """Every probe of the named services (default: all core) must pass; retried by the
    executor until the step's timeout, which makes it a wait-until-healthy gate."""

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        return {}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        from controller.loop import probe_once

        names = step.params.get("services") or [s.name for s in ctx.plan.spec.services if s.core]
        samples = probe_once(ctx.plan, ctx.backends, names)
        results = [{"service": s.service, "ok": s.ok, "detail": s.detail} for s in samples]
        failed = [r for r in results if not r["ok"]]
        if failed:
            raise AssertionError("verification failed: " + "; ".join(
                f"{r['service']}: {r['detail'] or 'probe failed'}" for r in failed))
        return {"checked": results}


class Notify(_NoRevert):
    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        return {}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        recipients = list(step.params.get("recipients", []))
        if not recipients:
            recipients = [r for n in ctx.plan.spec.notifications
                          if n.notifier == step.backend and n.level == ctx.level
                          for r in n.recipients]
        notice = Notice(
            plan=ctx.plan.name, level=ctx.level,
            subject=step.params.get("subject", f"[{ctx.plan.name}] failover in progress"),
            status=step.params.get("status", "failing over to the backup site"),
            affected=tuple(s.name for s in ctx.plan.spec.services),
            estimated_recovery=str(step.params.get("estimatedRecovery", "")),
            run_id=ctx.run_id, recipients=tuple(recipients),
        )
        ctx.backends.get(_backend(step)).send(notice=notice)
        return {"recipients": recipients, "level": ctx.level}


class Revert(_NoRevert):
    """A failback step: reverts one step of an earlier failover run from its evidence."""

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        return {}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        of = step.params["of"]
        original = ctx.plan.spec.steps[[s.name for s in ctx.plan.spec.steps].index(of["step"])]
        evidence = ctx.lookup_evidence(of["run"], of["step"])
        return HANDLERS[original.action].revert(original, ctx, evidence)


HANDLERS: dict[str, Handler] = {
    "traffic": Traffic(), "dns": Dns(), "restore": Restore(), "verify": Verify(),
    "notify": Notify(), "revert": Revert(),
}
REVERTIBLE = ("traffic", "dns")


def _backend(step: Step) -> str:
    if step.backend is None:
        raise PermanentError(f"step {step.name}: no backend configured")
    return step.backend


def step_from_run(definition: dict[str, Any]) -> Step:
    """Steps are frozen into the run at start; rebuild the model from that copy."""
    return Step.model_validate(definition)


def would_change(step: Step, ctx: StepContext) -> str:
    """For a dry run: read the current state (prepare is read-only) and say what changes."""
    if step.action == "traffic":
        before = Traffic().prepare(step, ctx)["before"]
        sites = ctx.plan.spec.sites
        to = str(step.params.get("to", sites.backup.name))
        after = {**before, **(step.params.get("weights") or {to: 100, sites.primary.name: 0})}
        steps = step.params.get("steps")
        how = f" in steps of {', '.join(f'{p}%' for p in steps)}" if steps else ""
        return "no change" if after == before else f"weights {before} -> {after}{how}"
    if step.action == "dns":
        before = {(r["name"], r["type"]): r["values"] for r in Dns().prepare(step, ctx)["before"]}
        changes = []
        for rec in dns_records(step):
            old = before.get((rec.key()[0], rec.type.upper()), [])
            if sorted(old) != sorted(rec.values):
                changes.append(f"{rec.name} {rec.type} {old or '(none)'} -> {list(rec.values)}")
        return "; ".join(changes) or "no change"
    return "-"

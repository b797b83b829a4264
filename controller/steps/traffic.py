"""The `traffic` step: shift the traffic to the backup site, at once or step by step.

Owns the traffic step's params, its plan (the weights now, saved before any change), its
apply (an instant cutover, or a stepped shift checked between steps), its revert (which
compares before it writes) and its readiness check (the destinations exist). Why each
rule is on `Traffic` below; the weights arithmetic is in the helpers after it.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from controller import fencing
from controller.model import Evidence, PermanentError, Sample, Weights
from controller.plan import (
    Duration,
    FailoverPlan,
    PlanSpec,
    ProbeSpec,
    Step,
    Strict,
    format_duration,
)
from controller.probes import Probe
from controller.steps import (
    Change,
    CheckContext,
    NotRevertible,
    Readiness,
    StepContext,
    StepKind,
    backend_of,
)

STEP_PAUSE = 2.0  # seconds at each step of a stepped shift when the plan gives no pause


class TrafficParams(Strict):
    """Instant cutover by default; with `steps`, a stepped shift checked between steps."""

    # `json_schema_extra`: the same rules in CEL for the CRD (`controller.crd`), so the
    # Kubernetes API server refuses on `kubectl apply` what the validators below refuse
    to: str | None = Field(None, description="traffic: the site traffic goes to")
    weights: dict[str, int] | None = Field(
        None, description="traffic: weight per site (or site/server)", json_schema_extra={
            "maxProperties": 64,  # bounded: the API server prices every rule
            "additionalProperties": {"type": "integer", "minimum": 0},
            "x-kubernetes-validations": [{
                "rule": "self.exists(k, self[k] > 0)",
                "message": "all weights are 0, which sends the traffic nowhere; give the "
                           "target site a weight above 0"}]})
    steps: list[int] | None = Field(
        None, description="stepped shift: percent of the traffic sent to `to` at each step, "
        "rising and ending at 100, e.g. [10, 50, 100]; default: one instant cutover")
    pause: Duration | None = Field(None, description="stepped shift: wait this long at each "
                                   "step before the check (default 2s)")
    check: ProbeSpec | None = Field(None, description="stepped shift: probe of the backup run "
                                    "after each step; a failure shifts traffic back to the "
                                    "original weights and fails the step")

    @field_validator("steps")
    @classmethod
    def _steps(cls, s: list[int] | None) -> list[int] | None:
        if s is None:
            return s
        if not s or any(not 0 < p <= 100 for p in s):
            raise ValueError(f"{s} must list percentages from 1 to 100, e.g. [10, 50, 100]")
        if s != sorted(set(s)) or s[-1] != 100:
            raise ValueError(f"{s} must rise and end at 100, e.g. [10, 50, 100]")
        return s

    @field_validator("weights")
    @classmethod
    def _weights(cls, w: dict[str, int] | None) -> dict[str, int] | None:
        if w is None:
            return w
        negative = sorted(k for k, v in w.items() if v < 0)
        if negative:
            raise ValueError(f"{', '.join(negative)}: below 0; a weight is a share of the "
                             "traffic from 0 (none) up, e.g. {dc-b: 100, dc-a: 0}")
        if not any(w.values()):
            raise ValueError(f"{w or '{}'} sends the traffic nowhere (on HAProxy it drains "
                             "every server); give the target site a weight above 0, e.g. "
                             "{dc-b: 100, dc-a: 0}, or remove weights to send all to `to`")
        return w

    @field_validator("pause", "check")
    @classmethod
    def _only_stepped(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and "steps" in info.data and info.data["steps"] is None:
            raise ValueError("only used by a stepped shift; add steps such as [10, 50, 100] "
                             f"or remove {info.field_name}")
        return value


class Traffic(StepKind[TrafficParams]):
    """Instant cutover by default. A stepped shift (`params.steps`, e.g. [10, 50, 100])
    sends that percentage of the traffic to the target at each step, waits `pause`, then
    runs the `check` probe against the backup; a failed check shifts back to the original
    weights (saved by `plan`) and fails the step, naming the percentage and the reason.
    A retried stepped shift resumes at the step the traffic has already reached.

    Every write is preceded by `fencing.check()` and the pause is `fencing.pause`, so a
    step told to stop (timeout, lost lease) stops at the step it reached, mid-pause too.
    `plan` saves the backend's `snapshot()` (the weights as `before`, plus whatever
    else the backend restores, e.g. HAProxy's drain/maint states). `revert` compares
    before it writes: it restores the original only when the traffic is where this step
    put it (any weights the step can leave, a stepped shift's intermediate ones and the
    half-way state of an enable-then-drain change included); traffic already at the
    original needs no write; anything else was changed by someone during the incident
    and is reported (`left`), never overwritten."""

    action = "traffic"
    Params = TrafficParams
    role = "traffic"
    revertible = True

    def check(self, step: Step, spec: PlanSpec) -> None:
        params = self.args(step)
        sites = (spec.sites.primary.name, spec.sites.backup.name)
        if params.to is not None and params.to.partition("/")[0] not in sites:
            raise ValueError(f"params.to: {params.to!r} is not a site of this plan; use "
                             f"{' or '.join(sites)} (spec.sites)")
        unknown = sorted(k for k in params.weights or {} if k.partition("/")[0] not in sites)
        if unknown:
            raise ValueError(
                f"params.weights: {', '.join(map(repr, unknown))} is not a site of this "
                f"plan; key weights by site ({' or '.join(sites)}) or site/server, e.g. "
                f"{{{sites[1]}: 100, {sites[0]}: 0}}")
        if params.steps:
            pause = STEP_PAUSE if params.pause is None else params.pause
            needed = pause * len(params.steps)
            if needed >= step.timeout:
                raise ValueError(
                    f"timeout: the stepped shift pauses {format_duration(pause)} at each of "
                    f"its {len(params.steps)} steps ({format_duration(needed)} in all) and "
                    f"cannot finish within its timeout of {format_duration(step.timeout)}; "
                    f"raise timeout above {format_duration(needed)} (plus the checks) or "
                    "shorten params.pause")

    def probes(self, step: Step) -> list[tuple[str, ProbeSpec]]:
        check = self.args(step).check
        return [("params.check", check)] if check is not None else []

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        return f"shift traffic to {_target(step, plan)[0]} via {step.backend}"

    def plan(self, step: Step, ctx: StepContext) -> Change:
        """The weights now (the `before` a revert restores, with the backend's whole
        `snapshot`) and the weights the step would leave."""
        snapshot = dict(ctx.backends.traffic(backend_of(step)).snapshot())
        before = dict(snapshot["weights"])
        after = _merge(before, _target(step, ctx.plan)[1])
        steps = self.args(step).steps
        how = f" in steps of {', '.join(f'{p}%' for p in steps)}" if steps else ""
        return Change({"before": before, "snapshot": snapshot},
                      "no change" if after == before else f"weights {before} -> {after}{how}")

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        to, weights = _target(step, ctx.plan)
        params = self.args(step)
        backend = ctx.backends.traffic(backend_of(step))
        if not params.steps:
            fencing.check()
            return dict(backend.shift(to=to, weights=weights))
        saved = change.get("before")
        original = dict(saved or backend.current())
        snapshot = change.get("snapshot") if saved else None
        reached = _share(backend.current(), to, weights)
        probe = ctx.backends.probe(f"{step.name}-check", params.check) if params.check else None
        pause = STEP_PAUSE if params.pause is None else params.pause
        done: list[Evidence] = []
        result: Evidence = {}
        for pct in params.steps:
            if pct < reached:  # a retry: this step was passed before the interruption
                continue
            fencing.check()
            result = dict(backend.shift(to=to, weights=_step_weights(pct, to, weights,
                                                                     original)))
            record: Evidence = {"percent": pct, "weights": result.get("after")}
            if "observed" in result:
                record["observed"] = result["observed"]
            done.append(record)
            fencing.pause(pause)
            if probe is None:
                continue
            sample = _run_check(probe)
            record["check"] = sample.detail or ("ok" if sample.ok else "failed")
            if not sample.ok:
                assert params.check is not None
                why = (f"step {step.name}: the {params.check.kind} check failed at {pct}% "
                       f"to {to}: {sample.detail or 'probe failed'}")
                try:
                    fencing.check()
                    backend.revert(to=original, snapshot=snapshot)
                except (fencing.Cancelled, fencing.StaleToken):
                    raise
                except Exception as exc:
                    raise PermanentError(f"{why}; shifting back to {original} also failed: "
                                         f"{exc}") from None
                raise PermanentError(f"{why}; traffic shifted back to {original}")
        return {**result, "steps": done}

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        """Works from what any attempt leaves: `before` (and `snapshot`) saved by plan
        and the step's definition; `after` and `steps` only when apply returned."""
        original = evidence.get("before")
        if not isinstance(original, dict) or not original:
            raise NotRevertible(f"step {step.name}: no saved weights to revert to")
        original = dict(original)
        backend = ctx.backends.traffic(backend_of(step))
        now = dict(backend.current())
        if _same(now, original):
            return {"before": now, "after": now, "writes": 0,
                    "note": f"step {step.name}: traffic is already at the original weights "
                            f"{original}; nothing to write"}
        if any(_same(now, w) for w in _written_by(step, ctx, original, evidence)):
            fencing.check()
            return dict(backend.revert(to=original, snapshot=evidence.get("snapshot")))
        to, weights = _target(step, ctx.plan)
        step_set = dict(evidence.get("after") or _merge(original, {to: 100, **weights}))
        n_now, n_set, n_orig = _normal(now, step_set, original)
        left = [{"destination": k, "now": n_now.get(k), "stepSet": n_set.get(k),
                 "original": n_orig.get(k)}
                for k in sorted(set(n_now) | set(n_set)) if n_now.get(k) != n_set.get(k)]
        changes = "; ".join(f"{e['destination']} is {e['now']} (the step set {e['stepSet']}, "
                            f"the original was {e['original']})" for e in left)
        return {"before": now, "after": now, "writes": 0, "left": left,
                "note": f"step {step.name}: traffic was changed during the incident by "
                        f"someone else: {changes}; left as it is, not reverted to "
                        f"{original}. Set the weights by hand if the original is wanted."}

    def readiness(self, step: Step, ctx: CheckContext) -> list[Readiness]:
        wanted = set(_target(step, ctx.plan)[1])
        return [("routes", partial(_routes, ctx, backend_of(step), wanted))]

    def facts(self, evidence: Evidence) -> list[str]:
        if "after" not in evidence:
            return []
        out = [f"weights {evidence.get('before')} → {evidence.get('after')}"]
        obs = evidence.get("observed")
        if obs:
            out.append(f"observed through the edge: {obs['requests']} requests, share "
                       f"{obs['share']}, errors {obs['errors']}")
        return out


KIND = Traffic()


def _routes(ctx: CheckContext, backend: str, wanted: set[str]) -> str:
    current = ctx.backends.traffic(backend).current()
    missing = wanted - set(current)
    if missing:
        raise RuntimeError(f"destinations {sorted(missing)} missing; have {sorted(current)}")
    return f"routes present: {current}"


CHECK_TIMEOUT = 30.0  # a stepped shift's check that has not answered by then has failed


def _target(step: Step, plan: FailoverPlan) -> tuple[str, Weights]:
    """The step's target site and final weights (default: all to the backup)."""
    params, sites = KIND.args(step), plan.spec.sites
    to = params.to or sites.backup.name
    return to, dict(params.weights or {to: 100, sites.primary.name: 0})


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


def _normal(*many: Weights) -> list[dict[str, int]]:
    """The weights keyed alike: a site key becomes the `site/server` keys any of them uses
    (HAProxy reports a site whose servers disagree server by server)."""
    servers: dict[str, set[str]] = {}
    for weights in many:
        for key in weights:
            site, sep, _ = key.partition("/")
            if sep:
                servers.setdefault(site, set()).add(key)
    out = []
    for weights in many:
        flat: dict[str, int] = {}
        for key, value in weights.items():
            for k in sorted(servers.get(key, ())) if "/" not in key else ():
                flat[k] = value
            if "/" in key or key not in servers:
                flat[key] = value
        for key, value in weights.items():  # a server's own key wins over its site's
            if "/" in key:
                flat[key] = value
        out.append(flat)
    return out


def _same(a: Weights, b: Weights) -> bool:
    na, nb = _normal(a, b)
    return na == nb


def _merge(base: Weights, over: Weights) -> Weights:
    """`over` applied on `base` as a shift applies it: named destinations change, the
    others keep theirs (a site key replaces that site's per-server keys)."""
    out = {k: v for k, v in base.items()
           if not any("/" not in o and k.startswith(f"{o}/") for o in over)}
    out.update(over)
    return out


def _written_by(step: Step, ctx: StepContext, original: Weights,
                evidence: Evidence) -> list[Weights]:
    """Every set of weights this step can leave behind, whatever attempt stopped where:
    each step of a stepped shift, the final weights, the half-way state of each
    enable-then-drain change (and of a shift back to the original), and what the
    evidence recorded."""
    to, weights = _target(step, ctx.plan)
    params = KIND.args(step)
    final = {to: 100, **weights}  # the mesh backends give an unnamed target 100
    path = [original]
    path += [_merge(original, _step_weights(p, to, final, original))
             for p in params.steps or []]
    path.append(_merge(original, final))
    recorded = [evidence.get("after")] + [s.get("weights") for s in evidence.get("steps")
                                          or [] if isinstance(s, dict)]
    path += [dict(w) for w in recorded if isinstance(w, dict)]
    found = list(path)
    pairs = [(path[i], path[i + 1]) for i in range(len(path) - 1)]
    for prev, nxt in pairs + [(w, original) for w in path]:
        p, n = _normal(prev, nxt)
        found.append({**p, **{k: v for k, v in n.items() if v > p.get(k, 0)}})  # rising
        if to in n:
            found.append({**p, to: n[to]})  # the target alone first (the memory fake)
    return found


def _run_check(probe: Probe) -> Sample:
    """Run one probe once on a private event loop (apply runs in a worker thread)."""

    async def once() -> Sample:
        try:
            return await asyncio.wait_for(probe.check(), CHECK_TIMEOUT)
        except Exception as exc:
            return Sample(probe.service, False, time.time(),
                          detail=f"{type(exc).__name__}: {exc}" if str(exc) else
                          f"no answer within {CHECK_TIMEOUT:g} s")
        finally:
            await probe.aclose()

    return asyncio.run(once())



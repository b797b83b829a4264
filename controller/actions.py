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

from controller import fencing
from controller.backends import Backends
from controller.dns import DnsConflict
from controller.model import Evidence, Notice, PermanentError, Record, Sample, Target, Weights
from controller.plan import STEP_PAUSE, FailoverPlan, Step, TrafficParams


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
    A retried stepped shift resumes at the step the traffic has already reached.

    Every write is preceded by `fencing.check()` and the pause is `fencing.pause`, so a
    step told to stop (timeout, lost lease) stops at the step it reached, mid-pause too.
    `prepare` saves the backend's `snapshot()` (the weights as `before`, plus whatever
    else the backend restores, e.g. HAProxy's drain/maint states). `revert` compares
    before it writes: it restores the original only when the traffic is where this step
    put it (any weights the step can leave, a stepped shift's intermediate ones and the
    half-way state of an enable-then-drain change included); traffic already at the
    original needs no write; anything else was changed by someone during the incident
    and is reported (`left`), never overwritten."""

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        snapshot = dict(ctx.backends.get(_backend(step)).snapshot())
        return {"before": dict(snapshot["weights"]), "snapshot": snapshot}

    def perform(self, step: Step, ctx: StepContext, prepared: Evidence) -> Evidence:
        to, weights = _target(step, ctx)
        params = TrafficParams.model_validate(step.params)
        backend = ctx.backends.get(_backend(step))
        if not params.steps:
            fencing.check()
            return dict(backend.shift(to=to, weights=weights))
        saved = prepared.get("before")
        original = dict(saved or backend.current())
        snapshot = prepared.get("snapshot") if saved else None
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
        """Works from what any attempt leaves: `before` (and `snapshot`) saved by prepare
        and the step's definition; `after` and `steps` only when perform returned."""
        original = evidence.get("before")
        if not isinstance(original, dict) or not original:
            raise NotRevertible(f"step {step.name}: no saved weights to revert to")
        original = dict(original)
        backend = ctx.backends.get(_backend(step))
        now = dict(backend.current())
        if _same(now, original):
            return {"before": now, "after": now, "writes": 0,
                    "note": f"step {step.name}: traffic is already at the original weights "
                            f"{original}; nothing to write"}
        if any(_same(now, w) for w in _written_by(step, ctx, original, evidence)):
            fencing.check()
            return dict(backend.revert(to=original, snapshot=evidence.get("snapshot")))
        to, weights = _target(step, ctx)
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


CHECK_TIMEOUT = 30.0  # a stepped shift's check that has not answered by then has failed


def _target(step: Step, ctx: StepContext) -> tuple[str, Weights]:
    """The step's target site and final weights (default: all to the backup)."""
    sites = ctx.plan.spec.sites
    to = str(step.params.get("to", sites.backup.name))
    return to, dict(step.params.get("weights") or {to: 100, sites.primary.name: 0})


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
    to, weights = _target(step, ctx)
    params = TrafficParams.model_validate(step.params)
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
    """A DNS cutover: compare-and-swap from the records `prepare` saved to the step's
    records. Success is always proven: a resumed step whose write already landed asks the
    provider to `verify` it (every server serves it / Route 53 INSYNC) and fails if it
    cannot. Revert is exact and honest (see `revert`)."""

    REVERT_READS = 3  # a revert re-reads after a concurrent change at most this many times

    @staticmethod
    def _same(now: Record | None, want: Record | None) -> bool:
        """Is the record now exactly `want` (values as data, and TTL)? None = absent."""
        from controller.dns import canonical_values

        if now is None or want is None:
            return now is None and want is None
        return (canonical_values(now.type, now.values)
                == canonical_values(want.type, want.values) and now.ttl == want.ttl)

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
        current = {r.key(): r for r in self._current(step, ctx, keys)}
        provider = ctx.backends.get(_backend(step))
        try:
            if all(self._same(current.get(r.key()), r) for r in desired):
                # a resumed step whose write landed before the crash: prove it is served
                proof = dict(provider.verify(desired=desired))
                return {**proof, "after": [r.to_json() for r in desired],
                        "alreadyApplied": True}
            return dict(provider.apply(expected=expected, desired=desired))
        except DnsConflict as exc:
            raise PermanentError(f"DNS changed under us: {exc}") from None

    def revert(self, step: Step, ctx: StepContext, evidence: Evidence) -> Evidence:
        """Put back what the step changed, from `before` (saved by prepare before any
        write) and the step's own records, whatever the step's outcome (succeeded, failed
        after writing, unknown). For each record, read now:

        - it is what the step wrote: put the original back (delete it if the step created
          it), by compare-and-swap/compare-and-delete, so a change made meanwhile wins;
        - it is already the original: nothing to write (`unchanged`), but still prove it is
          served (a re-run after a crash whose write landed);
        - anything else: someone changed it during the incident: leave it and report it
          (`left`: what it is now, what the step wrote, what it was).

        Idempotent: a re-run reads again and finds `unchanged` what the first run did."""
        if "before" not in evidence:
            if evidence.get("prepared"):  # prepare failed: perform never ran, nothing written
                return {"reverted": [], "unchanged": [], "left": [],
                        "note": f"step {step.name} never read the original records, so it "
                                "never wrote: nothing to revert"}
            raise NotRevertible(f"step {step.name}: no saved records to revert to")
        from controller.dns import absent

        provider = ctx.backends.get(_backend(step))
        wrote = {r.key(): r for r in dns_records(step)}
        original = {r.key(): r for r in (Record.from_json(x) for x in evidence["before"])
                    if r.key() in wrote}
        for attempt in range(self.REVERT_READS):
            current = {r.key(): r for r in self._current(step, ctx, set(wrote))}
            restore: list[Record] = []
            delete: list[Record] = []
            unchanged: list[Record] = []
            reverted: list[Evidence] = []
            left: list[Evidence] = []
            for key in sorted(wrote):
                now, ours, orig = current.get(key), wrote[key], original.get(key)
                label = f"{key[0]} {key[1]}"
                if self._same(now, orig):
                    unchanged.append(orig or absent(ours))
                elif self._same(now, ours):
                    assert now is not None
                    (restore if orig else delete).append(now)
                    reverted.append({"record": label, "action": "restored" if orig else
                                     "deleted", "stepWrote": list(ours.values),
                                     "original": list(orig.values) if orig else []})
                else:
                    left.append({"record": label, "now": list(now.values) if now else [],
                                 "stepWrote": list(ours.values),
                                 "original": list(orig.values) if orig else [],
                                 "ttl": {"now": now.ttl if now else None,
                                         "stepWrote": ours.ttl,
                                         "original": orig.ttl if orig else None}})
            proofs: Evidence = {}
            try:
                if restore:
                    back = [original[r.key()] for r in restore]
                    proofs["restore"] = dict(provider.apply(expected=restore, desired=back))
                if delete:
                    proofs["delete"] = dict(provider.delete(expected=delete))
                if unchanged:
                    proofs["verify"] = dict(provider.verify(desired=unchanged))
            except DnsConflict as exc:
                if attempt + 1 < self.REVERT_READS:
                    continue  # changed between our read and our write: read and decide again
                raise PermanentError(f"step {step.name}: DNS kept changing during the revert "
                                     f"({exc}); nothing was overwritten") from None
            result: Evidence = {
                "reverted": reverted,
                "unchanged": [{"record": f"{r.key()[0]} {r.key()[1]}", "now": list(r.values),
                               "why": "already the original"} for r in unchanged],
                "left": left, **proofs}
            if left:
                result["note"] = "left as someone set them during the incident: " + "; ".join(
                    f"{x['record']} is {x['now']} (the step wrote {x['stepWrote']}, the "
                    f"original was {x['original']})" for x in left)
            return result
        raise AssertionError("unreachable")  # the loop returns or raises


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
    """Restores a verified backup onto the target. A retry or a resumed step may run it
    again: the restorers refuse a target that holds data, so an attempt that landed (its
    answer lost, or the controller died during it) is never restored twice."""

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
        frozen = step.params.get("definition")  # as the failover run froze it at its start
        if frozen is None:  # a failback run recorded before definitions were frozen in it
            names = [s.name for s in ctx.plan.spec.steps]
            if of["step"] not in names:
                raise PermanentError(f"step {step.name}: step {of['step']} is no longer in "
                                     "the plan and this run did not freeze its definition")
            original = ctx.plan.spec.steps[names.index(of["step"])]
        else:
            original = step_from_run(frozen)
        evidence = ctx.lookup_evidence(of["run"], of["step"])
        return HANDLERS[original.action].revert(original, ctx, evidence)


HANDLERS: dict[str, Handler] = {
    "traffic": Traffic(), "dns": Dns(), "restore": Restore(), "verify": Verify(),
    "notify": Notify(), "revert": Revert(),
}


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
        after = _merge(before, _target(step, ctx)[1])
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

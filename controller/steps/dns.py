"""The `dns` step: compare-and-swap the plan's records to the backup site's addresses.

Owns the DNS step's plan (the records now, saved before any write), its apply (the swap,
proven served everywhere, then the optional link test through the new address), its
exact revert and its readiness checks (the names are readable; their TTL is prepared).
Its params (`DnsParams`) live in `controller.plan` because the DNS providers' TTL
preparation and link test read them too. Why each rule is on `Dns` below.
"""

from __future__ import annotations

from controller.dns import DnsConflict, ttl
from controller.dns.linktest import run_link_test
from controller.model import Evidence, PermanentError, Record
from controller.plan import DnsParams, FailoverPlan, Step, link_record
from controller.steps import (
    Change,
    CheckContext,
    NotRevertible,
    Readiness,
    StepContext,
    StepKind,
    backend_of,
    seconds,
)


class Dns(StepKind[DnsParams]):
    """A DNS cutover: compare-and-swap from the records `plan` saved to the step's
    records. Success is always proven: a resumed step whose write already landed asks the
    provider to `verify` it (every server serves it / Route 53 INSYNC) and fails if it
    cannot. Revert is exact and honest (see `revert`)."""

    action = "dns"
    Params = DnsParams
    role = "dns"
    revertible = True
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
        provider = ctx.backends.dns(backend_of(step))
        names = sorted({k[0] for k in keys})
        return [r for r in provider.records(names=names) if r.key() in keys]

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        records = ", ".join(f"{r.name} {r.type} -> {','.join(r.values)}"
                            for r in self.args(step).records)
        return f"set {records} via {step.backend}"

    def plan(self, step: Step, ctx: StepContext) -> Change:
        """The step's records as they are now (`before`, what a revert puts back)."""
        desired = records(step)
        before = self._current(step, ctx, {r.key() for r in desired})
        now = {r.key(): list(r.values) for r in before}
        changes = [f"{r.name} {r.type} {now.get(r.key()) or '(none)'} -> {list(r.values)}"
                   for r in desired if sorted(now.get(r.key(), [])) != sorted(r.values)]
        return Change({"before": [r.to_json() for r in before]},
                      "; ".join(changes) or "no change")

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        desired = records(step)
        evidence = self._swap(step, ctx, [Record.from_json(r) for r in change["before"]],
                              desired)
        if self.args(step).link_test:  # after the all-server verification, never on revert
            evidence["linkTest"] = _link_test(step, desired)
        return evidence

    def _swap(self, step: Step, ctx: StepContext, expected: list[Record],
              desired: list[Record]) -> Evidence:
        keys = {r.key() for r in desired}
        current = {r.key(): r for r in self._current(step, ctx, keys)}
        provider = ctx.backends.dns(backend_of(step))
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
        """Put back what the step changed, from `before` (saved by plan before any
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
            if evidence.get("prepared"):  # plan failed: apply never ran, nothing written
                return {"reverted": [], "unchanged": [], "left": [],
                        "note": f"step {step.name} never read the original records, so it "
                                "never wrote: nothing to revert"}
            raise NotRevertible(f"step {step.name}: no saved records to revert to")
        from controller.dns import absent

        provider = ctx.backends.dns(backend_of(step))
        wrote = {r.key(): r for r in records(step)}
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

    def readiness(self, step: Step, ctx: CheckContext) -> list[Readiness]:
        def readable() -> str:
            names = sorted({r.key()[0] for r in records(step)})
            found = ctx.backends.dns(backend_of(step)).records(names=names)
            return f"{len(found)} record sets readable for {', '.join(names)}"

        def ttl_ready() -> str:
            return ttl.check(step, ctx.backends.dns(backend_of(step)))

        checks: list[Readiness] = [("dns readable", readable)]
        if self.args(step).prepare_ttl is not None:
            checks.append(("dns ttl", ttl_ready))
        return checks

    def facts(self, evidence: Evidence) -> list[str]:
        if "servers" not in evidence:
            return []
        out = [f"zone {evidence.get('zone')} serial {evidence.get('serial')}, written in "
               f"{seconds(evidence.get('writeSeconds'))}, served everywhere after "
               f"{seconds(evidence.get('verifySeconds'))}"]
        out += [f"{srv['name']} ({srv['address']}:{srv['port']}) answers "
                f"{'; '.join(f'{k} {v}' for k, v in srv['answer'].items())} at serial "
                f"{srv['serial']} after {srv['attempts']} attempt(s)"
                for srv in evidence["servers"]]
        if evidence.get("note"):
            out.append(str(evidence["note"]))
        return out


KIND = Dns()


def records(step: Step) -> list[Record]:
    """The records the step sets."""
    return [Record.from_json(r.model_dump()) for r in KIND.args(step).records]


def _link_test(step: Step, desired: list[Record]) -> Evidence:
    """Reach the service through the new address (controller.dns.linktest); raises
    LinkTestFailed, which the executor retries within the step's budget."""
    params = KIND.args(step)
    spec = link_record(params)
    assert params.link_test is not None and spec is not None  # checked by plan validation
    key = Record(spec.name, spec.type, spec.ttl, tuple(spec.values)).key()
    record = next(r for r in desired if r.key() == key)
    return run_link_test(params.link_test, record)



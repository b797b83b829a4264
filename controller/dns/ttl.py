"""TTL pre-lowering: make the DNS cutover take effect fast by lowering TTLs ahead of time.

Resolvers keep an answer for its TTL, so clients may use the old address for up to the
OLD record's TTL after a cutover. Lowering the TTL of the plan's records days or hours
before a failover (`failoverctl dns-prepare PLAN`) shortens that window. Each DNS step
may name its wanted pre-failover TTL (`params.prepareTtl`); readiness reports whether
every current record is at or below it.

Rules: the values are never touched (only the TTL); a TTL is only ever lowered, never
raised; each write is the provider's compare-and-swap (the values read are the expected
values, so a concurrent change is rejected and nothing is overwritten) and is verified
like any DNS write; a record already at or below the wanted TTL is left alone, so the
command is idempotent; every change (and every dry run) is audited by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.dns import DnsConflict, DnsProvider
from controller.model import Evidence, PermanentError, Record
from controller.plan import DnsParams, FailoverPlan, Step


@dataclass(frozen=True)
class TtlState:
    """One record of a DNS step: its current TTL and the wanted pre-failover TTL."""

    step: str
    backend: str
    current: Record | None  # None: the record does not exist (nothing to lower)
    name: str
    type: str
    wanted: int

    @property
    def ok(self) -> bool:
        return self.current is None or self.current.ttl <= self.wanted

    def describe(self) -> str:
        if self.current is None:
            return f"{self.name} {self.type} absent"
        mark = "<=" if self.ok else ">"
        return f"{self.name} {self.type} ttl {self.current.ttl} {mark} {self.wanted}"


def _params(step: Step) -> DnsParams:
    if not isinstance(step.args, DnsParams):
        raise PermanentError(f"step {step.name}: a {step.action} step has no DNS records")
    return step.args


def wanted_ttl(step: Step, override: int | None = None) -> int | None:
    """The pre-failover TTL for a DNS step: `override`, else `params.prepareTtl`."""
    if override is not None:
        return override
    return _params(step).prepare_ttl


def states(step: Step, provider: DnsProvider, wanted: int) -> list[TtlState]:
    """Read the current TTL of every record the step will change."""
    params = _params(step)
    keys = [Record(r.name, r.type, r.ttl, tuple(r.values)).key() for r in params.records]
    found = {r.key(): r for r in provider.records(names=sorted({k[0] for k in keys}))}
    return [TtlState(step.name, str(step.backend), found.get(k), k[0], k[1], wanted)
            for k in keys]


def check(step: Step, provider: DnsProvider) -> str:
    """Readiness: every record at or below the step's prepareTtl (raises when not)."""
    wanted = wanted_ttl(step)
    assert wanted is not None
    seen = states(step, provider, wanted)
    high = [s for s in seen if not s.ok]
    if high:
        raise RuntimeError("TTL above the pre-failover TTL: " + "; ".join(
            s.describe() for s in high) + " (lower it: failoverctl dns-prepare PLAN)")
    return "TTL ready: " + "; ".join(s.describe() for s in seen)


def prepare(plan: FailoverPlan, get: Callable[[str], DnsProvider], *, ttl: int | None = None,
            dry_run: bool = False,
            audit: Callable[[str], None] | None = None) -> list[Evidence]:
    """Lower the TTL of every DNS step's records to its wanted TTL (see module doc).

    Returns one entry per record: `action` is `lowered`, `would-lower` (dry run),
    `unchanged` (already at or below) or `absent`.
    """
    out: list[Evidence] = []
    for step in plan.spec.steps:
        if not isinstance(step.args, DnsParams) or not step.backend:
            continue
        wanted = wanted_ttl(step, ttl)
        if wanted is None:
            continue
        provider = get(step.backend)
        for state in states(step, provider, wanted):
            entry: Evidence = {"step": step.name, "backend": step.backend,
                               "name": state.name, "type": state.type, "wanted": wanted,
                               "ttl": state.current.ttl if state.current else None}
            if state.current is None or state.ok:
                entry["action"] = "absent" if state.current is None else "unchanged"
                out.append(entry)
                continue
            old = state.current
            new = Record(old.name, old.type, wanted, old.values)
            if dry_run:
                entry["action"] = "would-lower"
                out.append(entry)
                continue
            try:
                evidence = dict(provider.apply(expected=[old], desired=[new]))
            except DnsConflict as exc:
                raise PermanentError(f"{old.name} {old.type} changed while its TTL was being "
                                     f"lowered; nothing overwritten: {exc}") from None
            entry.update(action="lowered", values=list(old.values),
                         servers=len(evidence.get("servers", [])))
            if "clientsMayUseOldUntil" in evidence:
                entry["effectiveEverywhereBy"] = evidence["clientsMayUseOldUntil"]
            if audit is not None:
                audit(f"step {step.name}: {old.name} {old.type} ttl {old.ttl} -> {wanted} "
                      f"(values {list(old.values)} unchanged)")
            out.append(entry)
    return out

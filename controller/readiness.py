"""Readiness: is the backup site able to take over right now? Checked before an incident.

Each check is read-only and harmless. A backend may offer its own `ready() -> str`
(raising when not ready: a DNS provider sends a signed no-op update, HAProxy answers on
its admin socket); on top, the plan's steps are checked against the world: the
traffic destinations exist, the DNS names are readable (and, when a DNS step sets
`prepareTtl`, their TTL is at or below it: `failoverctl dns-prepare` lowers it), and the
newest verified backup of every restored data set is younger than the step's RPO budget
(`params.rpo`, default 24h), and a remote restore target answers over SSH with its pinned
host key and has the PostgreSQL binaries the restore runs.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from controller.actions import dns_records
from controller.backends import Backends
from controller.plan import FailoverPlan, format_duration, parse_duration
from controller.secrets import redact

DEFAULT_RPO = 24 * 3600.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _run(name: str, fn: Callable[[], str], timeout: float) -> Check:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        detail = pool.submit(fn).result(timeout=timeout)
        return Check(name, True, redact(detail))
    except concurrent.futures.TimeoutError:
        return Check(name, False, f"no answer within {timeout:g} s")
    except Exception as exc:
        return Check(name, False, redact(f"{type(exc).__name__}: {exc}"))
    finally:
        pool.shutdown(wait=False)


def _age(seconds: float) -> str:
    """An age for people: whole hours and minutes ("2h", "2h 5m", "59m", "40s")."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours}h {minutes}m" if hours and minutes else f"{hours}h" if hours else f"{minutes}m"


def _fresh_backup(backends: Backends, store: str, dataset: str, rpo: float,
                  now: float) -> str:
    backups = backends.get(store).list(dataset=dataset)
    verified = [b for b in backups if b.verified is True]
    if not verified:
        raise RuntimeError(f"no verified backup of {dataset} in {store} "
                           f"({len(backups)} unverified)")
    newest = max(verified, key=lambda b: b.taken_at)
    age = now - newest.taken_at
    if age > rpo:
        raise RuntimeError(f"newest verified backup of {dataset} ({newest.id}) is "
                           f"{_age(age)} old; RPO budget is "
                           f"{format_duration(rpo)}")
    return f"newest verified backup {newest.id} is {_age(age)} old"


def _routes(backends: Backends, backend: str, wanted: set[str]) -> str:
    current = backends.get(backend).current()
    missing = wanted - set(current)
    if missing:
        raise RuntimeError(f"destinations {sorted(missing)} missing; have {sorted(current)}")
    return f"routes present: {current}"


def _restore_host(backends: Backends, step: Any) -> str:
    """The restore target host answers over SSH with its pinned host key, and its
    PostgreSQL binaries are where the restore will look for them."""
    from controller.backups.node import TargetOptions
    from controller.model import Target

    into = step.params["into"]
    target = Target(host=into.get("host"), path=into["path"], options=into.get("options", {}))
    opts = TargetOptions.model_validate(target.options)
    host = backends.get(step.backend).host(target, opts)
    try:
        host.run(["test", "-x", f"{opts.pg_bin}/pg_ctl"], timeout=30)
    finally:
        host.close()
    return f"{target.host}: SSH with the pinned host key works; {opts.pg_bin}/pg_ctl present"


def checks(plan: FailoverPlan, backends: Backends, *, now: float | None = None,
           timeout: float = 10.0) -> list[Check]:
    now = time.time() if now is None else now
    out: list[Check] = []
    for spec in plan.spec.backends:
        try:
            backend = backends.get(spec.name)
        except Exception as exc:
            out.append(Check(f"backend {spec.name}", False,
                             redact(f"cannot be configured: {exc}")))
            continue
        ready = getattr(backend, "ready", None)
        if callable(ready):
            out.append(_run(f"backend {spec.name}", ready, timeout))
    sites = plan.spec.sites
    for step in plan.spec.steps:
        if step.action == "traffic" and step.backend:
            wanted = set(step.params.get("weights") or {step.params.get("to", sites.backup.name),
                                                       sites.primary.name})
            out.append(_run(f"step {step.name}: routes",
                            partial(_routes, backends, step.backend, wanted), timeout))
        elif step.action == "dns" and step.backend:
            def read(s: Any = step) -> str:
                names = sorted({r.key()[0] for r in dns_records(s)})
                found = backends.get(s.backend).records(names=names)
                return f"{len(found)} record sets readable for {', '.join(names)}"
            out.append(_run(f"step {step.name}: dns readable", read, timeout))
            if step.params.get("prepareTtl") is not None:
                def ttl_ready(s: Any = step) -> str:
                    from controller.dns import ttl

                    return ttl.check(s, backends.get(s.backend))
                out.append(_run(f"step {step.name}: dns ttl", ttl_ready, timeout))
        elif step.action == "restore" and "store" in step.params:
            rpo = parse_duration(step.params.get("rpo", DEFAULT_RPO))
            out.append(_run(f"step {step.name}: backup within RPO",
                            partial(_fresh_backup, backends, step.params["store"],
                                    step.params.get("dataset", ""), rpo, now), timeout))
            restorer = backends.get(step.backend) if step.backend else None
            if (step.params.get("into") or {}).get("host") and hasattr(restorer, "host"):
                out.append(_run(f"step {step.name}: restore host",
                                partial(_restore_host, backends, step), timeout))
    return out


def summary(results: list[Check]) -> dict[str, Any]:
    passed = sum(c.ok for c in results)
    return {
        "score": round(100.0 * passed / len(results), 1) if results else 100.0,
        "passed": passed,
        "failed": [asdict(c) for c in results if not c.ok],
        "checks": [asdict(c) for c in results],
    }

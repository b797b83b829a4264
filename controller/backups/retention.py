"""Retention: which backups of a data set a store no longer keeps, and removing them.

Owns the pruning rule of `spec.backups[].retention` and its execution on one store
(run on the local and on the off-site store alike):
- the newest verified backup is never pruned, whatever its age: the last restorable copy
  of a data set is never removed by a rule (on either store);
- a backup is pruned once `keep` verified backups newer than it exist (so failed or
  never-verified ones newer than the kept ones stay, as evidence, until then);
- a backup older than `maxAge` is pruned.
`prunable` is pure (the rule); `prune` removes each pruned backup's catalog entry first
(so it vanishes from listings and is never chosen by a restore) and then its payload,
and audits every removal with the reason. A pgBackRest set loses only its catalog entry:
its files are pgBackRest's own, expired by its `repo1-retention-*` options.

`prune_strays` removes payloads no catalog entry names once they are older than
`strayAfter`: the off-site copy a job stages while it takes a backup is cataloged by its
off-site phase (or removed when the verification fails), so a job that died in between
leaves one behind. Such a payload is in no catalog: never listed, never restored, never
anyone's verified copy; its catalog entry is looked for again right before it goes, so a
copy cataloged meanwhile stays. The bound (default 2 days) must outlast a job's take and
verification, so a running job's staged copy is never taken for a stray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from controller import fencing
from controller.backups import naming
from controller.backups.catalog import CatalogStore
from controller.model import Backup
from controller.plan import Retention, format_duration


@dataclass(frozen=True)
class Pruned:
    backup: Backup
    reason: str


def prunable(backups: list[Backup], rule: Retention, *, now: float) -> list[Pruned]:
    """The backups `rule` removes, oldest last, each with its reason. Pure."""
    ordered = sorted(backups, key=lambda b: (b.taken_at, b.id), reverse=True)
    newest_verified = next((b for b in ordered if b.verified is True), None)
    out: list[Pruned] = []
    verified_newer = 0
    for b in ordered:
        if b is not newest_verified:
            if verified_newer >= rule.keep:
                out.append(Pruned(b, f"{verified_newer} newer verified backups are kept "
                                     f"(keep: {rule.keep})"))
            elif rule.max_age is not None and now - b.taken_at > rule.max_age:
                out.append(Pruned(b, f"older than maxAge {format_duration(rule.max_age)}"))
        if b.verified is True:
            verified_newer += 1
    return out


def prune(store: CatalogStore, *, dataset: str, rule: Retention, actor: str,
          now: float | None = None) -> list[Pruned]:
    """Apply `rule` to `dataset` on `store`; return what was removed."""
    removed = prunable(store.list(dataset=dataset), rule,
                       now=time.time() if now is None else now)
    for p in removed:
        fencing.check()
        keys = [naming.catalog_key(p.backup.id)]
        if p.backup.meta.get("format") == "basebackup":
            keys += [o["key"] for o in p.backup.meta.get("objects") or []]
        for key in keys:
            store.objects.delete(key)
        store.audit(actor=actor, action="backup-pruned",
                    detail=f"removed {p.backup.id} from {store.objects.location('')}: "
                           f"{p.reason}")
    return removed


def prune_strays(store: CatalogStore, *, dataset: str, rule: Retention, actor: str,
                 now: float | None = None) -> list[str]:
    """Remove `dataset`'s payloads that no catalog entry names, last written more than
    `rule.stray_after` ago; return each one's location and why it went."""
    now = time.time() if now is None else now
    removed = []
    for stray in store.objects.uncataloged():
        parsed = naming.parse_name(stray.name)
        if parsed is None or parsed[1] != dataset or now - stray.modified <= rule.stray_after:
            continue
        fencing.check()
        try:
            store.objects.peek(naming.catalog_key(stray.name), 0)
            continue  # cataloged since it was listed: a copy, not a stray
        except FileNotFoundError:
            pass
        key = naming.payload_key(stray.name)
        store.objects.delete(key)
        hours = (now - stray.modified) / 3600
        where = (f"{store.objects.location(key)}: in no catalog, written {hours:.0f}h ago "
                 f"(strayAfter {format_duration(rule.stray_after)}: left by a job that died "
                 "before cataloging it)")
        store.audit(actor=actor, action="backup-stray-pruned", detail=f"removed {where}")
        removed.append(where)
    return removed

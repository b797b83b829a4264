"""Choosing the backup to restore, per the emergency plan, with the reason in one sentence.

Owns the restore-selection rule: only a backup whose verification passed is restorable;
take the newest verified continuous (WAL-based) backup, else the newest verified daily
one (daily, full or incremental), else the newest verified backup of any other kind.
The sentence names the chosen backup and every newer one skipped and why (failed
verification, never verified, found damaged at restore time), so the journal says
exactly what happened. The restore step calls it again with the backups that failed at
restore time (`failed`) to get the next one in the same order. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.backups.naming import iso
from controller.model import Backup, PermanentError

DAILY = ("daily", "full", "incremental")


class NoRestorableBackup(PermanentError):
    pass


def _why_not(b: Backup, failed: Mapping[str, str]) -> str:
    if b.id in failed:
        return f"{b.id} failed at restore ({failed[b.id]})"
    if b.verified is False:
        return f"{b.id} failed verification ({b.verification or 'no detail'})"
    return f"{b.id} is not verified yet"


def choose(backups: list[Backup], *, failed: Mapping[str, str] | None = None
           ) -> tuple[Backup, str]:
    """(backup, reason sentence), leaving out the backups in `failed` (id -> why they
    failed at restore time); raises NoRestorableBackup when none is left."""
    failed = failed or {}
    ordered = sorted(backups, key=lambda b: (b.taken_at, b.id), reverse=True)
    usable = [b for b in ordered if b.verified is True and b.id not in failed]
    if not usable:
        dataset = ordered[0].dataset if ordered else "the data set"
        unusable = ([b for b in ordered if b.id in failed]
                    + [b for b in ordered if b.id not in failed][:5])
        detail = "; ".join(_why_not(b, failed) for b in unusable) or "the store lists none"
        left = " left" if failed else ""
        raise NoRestorableBackup(f"no verified backup of {dataset}{left} to restore: {detail}")
    good = "verified and intact" if failed else "verified"
    rules = [
        (lambda b: b.kind == "continuous", f"the newest {good} continuous backup"),
        (lambda b: b.kind in DAILY, f"no continuous backup is {good}, so the newest {good} "
         "daily backup"),
        (lambda b: True, f"no continuous or daily backup is {good}, so the newest {good} "
         "older backup"),
    ]
    chosen, label = next((found[0], why) for match, why in rules
                         if (found := [b for b in usable if match(b)]))
    skipped = [b for b in ordered if b.taken_at >= chosen.taken_at and b is not chosen
               and (b.verified is not True or b.id in failed)]
    sentence = (f"restoring {chosen.id} ({chosen.kind}, taken {iso(chosen.taken_at)}, "
                f"verified: {chosen.verification or 'passed'}): {label}")
    if skipped:
        sentence += "; skipped newer " + "; ".join(_why_not(b, failed) for b in skipped)
    return chosen, sentence

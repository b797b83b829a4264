"""Choosing the backup to restore, per the emergency plan, with the reason in one sentence.

Owns the restore-selection rule: only a backup whose verification passed is restorable;
take the newest verified continuous (WAL-based) backup, else the newest verified daily
one (daily, full or incremental), else the newest verified backup of any other kind.
The sentence names the chosen backup and every newer one skipped and why (failed
verification, never verified), so the journal says exactly what happened. Pure: no I/O.
"""

from __future__ import annotations

from controller.backups.naming import iso
from controller.model import Backup, PermanentError

DAILY = ("daily", "full", "incremental")


class NoRestorableBackup(PermanentError):
    pass


def _why_not(b: Backup) -> str:
    if b.verified is False:
        return f"{b.id} failed verification ({b.verification or 'no detail'})"
    return f"{b.id} is not verified yet"


def choose(backups: list[Backup]) -> tuple[Backup, str]:
    """(backup, reason sentence); raises NoRestorableBackup when nothing is verified."""
    ordered = sorted(backups, key=lambda b: (b.taken_at, b.id), reverse=True)
    verified = [b for b in ordered if b.verified is True]
    if not verified:
        dataset = ordered[0].dataset if ordered else "the data set"
        detail = "; ".join(_why_not(b) for b in ordered[:5]) or "the store lists none"
        raise NoRestorableBackup(f"no verified backup of {dataset} to restore: {detail}")
    rules = [
        ("continuous", lambda b: b.kind == "continuous", "the newest verified continuous "
         "backup"),
        ("daily", lambda b: b.kind in DAILY, "no continuous backup is verified, so the newest "
         "verified daily backup"),
        ("other", lambda b: True, "no continuous or daily backup is verified, so the newest "
         "verified older backup"),
    ]
    chosen, label = verified[0], rules[-1][2]
    for _, match, why in rules:
        found = [b for b in verified if match(b)]
        if found:
            chosen, label = found[0], why
            break
    skipped = [b for b in ordered if b.taken_at >= chosen.taken_at and b is not chosen
               and b.verified is not True]
    sentence = (f"restoring {chosen.id} ({chosen.kind}, taken {iso(chosen.taken_at)}, "
                f"verified: {chosen.verification or 'passed'}): {label}")
    if skipped:
        sentence += "; skipped newer " + "; ".join(_why_not(b) for b in skipped)
    return chosen, sentence

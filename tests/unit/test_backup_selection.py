"""Selection per the emergency plan: continuous, else daily, else older verified; why."""

from __future__ import annotations

import pytest

from controller.backups.selection import NoRestorableBackup, choose
from controller.model import Backup


def b(id: str, kind: str, at: float, verified: bool | None, why: str = "") -> Backup:
    return Backup(id=id, dataset="orders", kind=kind, taken_at=at, location=f"mem:{id}",
                  verified=verified, verification=why)


def test_newest_verified_continuous_wins_over_newer_daily() -> None:
    chosen, why = choose([b("d2", "daily", 300, True), b("c1", "continuous", 200, True)])
    assert chosen.id == "c1" and "newest verified continuous" in why


def test_failed_continuous_falls_back_to_daily_and_says_why() -> None:
    chosen, why = choose([b("c2", "continuous", 400, False, "checksums failed: mismatch"),
                          b("d1", "daily", 300, True), b("d0", "daily", 100, True)])
    assert chosen.id == "d1"
    assert "no continuous backup is verified" in why
    assert "skipped newer c2 failed verification (checksums failed: mismatch)" in why


def test_flipped_newest_daily_falls_back_to_previous_verified() -> None:
    chosen, why = choose([b("d2", "daily", 300, False, "decrypt failed"),
                          b("d1", "daily", 200, True), b("d3", "daily", 350, None)])
    assert chosen.id == "d1"
    assert "d3 is not verified yet" in why and "d2 failed verification" in why


def test_other_kinds_only_when_nothing_better() -> None:
    chosen, why = choose([b("x", "weekly", 100, True), b("d", "daily", 200, False)])
    assert chosen.id == "x" and "older" in why


def test_nothing_verified_is_a_permanent_error_listing_each() -> None:
    with pytest.raises(NoRestorableBackup, match=r"d2 failed verification.*d1 is not verified"):
        choose([b("d1", "daily", 100, None), b("d2", "daily", 200, False, "bad")])
    with pytest.raises(NoRestorableBackup, match="the store lists none"):
        choose([])


def test_backups_that_failed_at_restore_are_left_out_in_the_same_order() -> None:
    listed = [b("c2", "continuous", 400, True), b("c1", "continuous", 300, True),
              b("d2", "daily", 350, True), b("d1", "daily", 100, True)]
    order = []
    failed: dict[str, str] = {}
    while True:
        try:
            chosen, why = choose(listed, failed=failed)
        except NoRestorableBackup as exc:
            assert str(exc) == ("no verified backup of orders left to restore: " + "; ".join(
                f"{id} failed at restore (bad tag)" for id in ("c2", "d2", "c1", "d1")))
            break
        order.append(chosen.id)
        failed[chosen.id] = "bad tag"
    assert order == ["c2", "c1", "d2", "d1"]  # continuous first, then daily, newest first
    chosen, why = choose(listed, failed={"c2": "bad tag", "c1": "missing"})
    assert why.endswith("no continuous backup is verified and intact, so the newest verified "
                        "and intact daily backup; skipped newer c2 failed at restore (bad tag)")

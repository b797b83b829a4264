"""Retention: prune by count and age, never the newest verified backup of a data set, and
payloads in no catalog once stray; on the filesystem store the pruned backups' files are gone
and each removal is audited."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.backups.filesystem import FilesystemBackupStore, FilesystemStoreOptions
from controller.backups.retention import prunable, prune, prune_strays
from controller.backups.selection import choose
from controller.model import Backup
from controller.plan import Retention
from controller.secrets import Secrets

DAY = 86400.0
NOW = 1_800_000_000.0


def b(age_days: float, verified: bool | None = True) -> Backup:
    at = NOW - age_days * DAY
    return Backup(id=f"b{age_days!r}", dataset="orders", kind="daily", taken_at=at,
                  location=f"mem:{at}", verified=verified)


def ids(backups: list[Any]) -> list[str]:
    return [getattr(x, "backup", x).id for x in backups]


def test_count_keeps_the_newest_verified_and_prunes_the_older() -> None:
    backups = [b(0), b(1), b(2), b(3)]
    pruned = prunable(backups, Retention(keep=2), now=NOW)
    assert ids(pruned) == ["b2", "b3"]
    assert "2 newer verified backups are kept (keep: 2)" in pruned[0].reason


def test_failed_backups_count_for_nothing_and_go_with_the_kept_ones() -> None:
    # failed ones newer than the kept verified ones stay (evidence) until keep verified
    # backups are newer than them
    backups = [b(0, False), b(1), b(2, False), b(3), b(4, None), b(5)]
    assert ids(prunable(backups, Retention(keep=2), now=NOW)) == ["b4", "b5"]


def test_age_prunes_but_never_the_last_verified_backup() -> None:
    backups = [b(1, False), b(40), b(50)]
    pruned = prunable(backups, Retention(keep=10, maxAge=30 * DAY), now=NOW)
    assert ids(pruned) == ["b50"]
    assert pruned[0].reason == "older than maxAge 720h"


def test_nothing_verified_nothing_pruned_by_count() -> None:
    assert prunable([b(0, False), b(1, None), b(2, False)], Retention(keep=1), now=NOW) == []


@given(st.lists(st.tuples(st.floats(0, 400), st.sampled_from([True, False, None])),
                min_size=1, max_size=30, unique_by=lambda t: t[0]),
       st.integers(1, 10), st.none() | st.floats(1, 100))
def test_the_newest_verified_backup_always_survives(
        specs: list[tuple[float, bool | None]], keep: int, max_age: float | None) -> None:
    backups = [b(age, v) for age, v in specs]
    rule = Retention(keep=keep, maxAge=None if max_age is None else max_age * DAY)
    pruned = set(ids(prunable(backups, rule, now=NOW)))
    survivors = [x for x in backups if x.id not in pruned]
    if any(x.verified for x in backups):
        assert choose(survivors)[0].id == choose(backups)[0].id
    assert sum(1 for x in survivors if x.verified) <= max(keep, 1)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: Any
          ) -> FilesystemBackupStore:
    monkeypatch.setenv("RETENTION_TEST_KEY", base64.b64encode(os.urandom(32)).decode())
    return FilesystemBackupStore(FilesystemStoreOptions.model_validate({
        "path": str(tmp_path / "store"), "encryptionKey": {"fromEnv": "RETENTION_TEST_KEY"}}),
        secrets=Secrets(), audit=journal.audit)


def _add(store: FilesystemBackupStore, src: Path, *, age_days: float,
         verified: bool) -> Backup:
    backup = store.add_directory(src, dataset="orders", kind="daily",
                                 taken_at=time.time() - age_days * DAY, actor="alice")
    return store.record_verification(backup.id, {
        "passed": verified, "at": time.time(), "durationS": 0.0, "summary": "test",
        "checks": []}, actor="verifier")


def test_prune_removes_entry_and_payload_from_the_filesystem_store(
        store: FilesystemBackupStore, tmp_path: Path, journal: Any) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "PG_VERSION").write_text("15\n")
    old = _add(store, src, age_days=3, verified=True)
    failed = _add(store, src, age_days=2, verified=False)
    new = _add(store, src, age_days=1, verified=True)

    removed = prune(store, dataset="orders", rule=Retention(keep=1), actor="alice")

    assert sorted(ids(removed)) == sorted([old.id, failed.id])
    assert [x.id for x in store.list(dataset="orders")] == [new.id]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [new.id]
    trail = [a for a in journal.audit_trail() if a["action"] == "backup-pruned"]
    assert {a["actor"] for a in trail} == {"alice"} and len(trail) == 2
    assert prune(store, dataset="orders", rule=Retention(keep=1), actor="alice") == []


def test_a_stray_payload_goes_once_older_than_stray_after_never_a_cataloged_one(
        store: FilesystemBackupStore, tmp_path: Path, journal: Any) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "PG_VERSION").write_text("15\n")
    kept = _add(store, src, age_days=1, verified=True)
    stray = _add(store, src, age_days=0, verified=False)
    (tmp_path / "store" / stray.id / "catalog.json").unlink()  # a job died before cataloging
    rule = Retention(keep=1, strayAfter="2d")
    now = time.time()

    assert prune_strays(store, dataset="orders", rule=rule, actor="alice", now=now + DAY) == []
    removed = prune_strays(store, dataset="orders", rule=rule, actor="alice", now=now + 3 * DAY)

    assert len(removed) == 1 and stray.id in removed[0]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [kept.id]
    assert [x.id for x in store.list(dataset="orders")] == [kept.id]
    assert [a["action"] for a in journal.audit_trail()].count("backup-stray-pruned") == 1

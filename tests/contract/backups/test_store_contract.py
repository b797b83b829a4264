"""The `BackupStore` contract, run through the same tests for the in-memory fake and the
catalog stores (a directory, and S3 on moto's real server).

What a restore step relies on from `list`: a data set's backups, newest first, only that
data set's, each with its kind, time and latest verification state (never verified,
passed, or failed with the reason), so that `choose` picks the newest verified backup;
a data set with no backups lists none. What it relies on from `check_integrity`, the
cheap pass right before a restore: an intact backup passes, saying what it checked; one
whose payload is gone fails with `DamagedBackup` naming it (so the step falls back).
From `record_damage`: a backup found damaged at restore time lists as a failed
verification from then on, so no later restore chooses it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.backups import BackupStore, DamagedBackup
from controller.backups.filesystem import FilesystemBackupStore
from controller.backups.s3 import S3BackupStore
from controller.backups.selection import NoRestorableBackup, choose
from controller.model import Backup
from controller.secrets import Secrets
from controller.testing import FakeBackupStore

from .conftest import KEY_ENV

KINDS = ("memory", "filesystem", "s3")
_N = itertools.count()

# (dataset, kind, takenAt, verification: None = never, else (passed, summary))
CATALOG: list[tuple[str, str, float, tuple[bool, str] | None]] = [
    ("orders", "daily", 1_700_000_500.0, (False, "checksum mismatch in object 1")),
    ("orders", "daily", 1_700_001_000.0, (True, "all 4 checks passed")),
    ("orders", "continuous", 1_700_002_000.0, None),
    ("users", "daily", 1_700_003_000.0, (True, "all 4 checks passed")),
]

Store = Callable[[], BackupStore]  # the store, holding CATALOG


def fill_catalog(store: S3BackupStore | FilesystemBackupStore) -> None:
    for dataset, kind, taken_at, result in CATALOG:
        backup = store.register(dataset=dataset, kind=kind, taken_at=taken_at,
                                actor="cron:nightly", format="pgbackrest",
                                location=f"pgbackrest:main/{taken_at:.0f}", size=1024,
                                details={"label": f"{taken_at:.0f}F"})
        if result is not None:
            store.record_verification(backup.id, {"passed": result[0], "summary": result[1],
                                                  "at": taken_at + 60}, actor="verifier")


def fake_catalog() -> dict[str, Any]:
    return {"key": f"contract-{next(_N)}", "backups": [
        {"id": f"{dataset}-{kind}-{taken_at:.0f}", "dataset": dataset, "kind": kind,
         "takenAt": taken_at, **({} if result is None else
                                 {"verified": result[0], "verification": result[1]})}
        for dataset, kind, taken_at, result in CATALOG]}


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    kind: str = request.param
    if kind == "memory":
        return FakeBackupStore(FakeBackupStore.Options.model_validate(fake_catalog()))
    real: S3BackupStore | FilesystemBackupStore
    if kind == "filesystem":
        real = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
            {"path": str(tmp_path / "catalog")}), secrets=Secrets())
    else:
        options = request.getfixturevalue("store_options")
        real = S3BackupStore(S3BackupStore.Options.model_validate(options), secrets=Secrets())
    fill_catalog(real)
    return real


def test_a_data_sets_backups_are_listed_newest_first_and_only_its_own(
        store: BackupStore) -> None:
    listed = store.list(dataset="orders")
    assert [(b.dataset, b.kind, b.taken_at) for b in listed] == [
        ("orders", "continuous", 1_700_002_000.0), ("orders", "daily", 1_700_001_000.0),
        ("orders", "daily", 1_700_000_500.0)]
    assert len({b.id for b in listed}) == 3


def test_each_backup_carries_its_latest_verification_state(store: BackupStore) -> None:
    never, passed, failed = store.list(dataset="orders")
    assert never.verified is None and never.verification == ""
    assert passed.verified is True
    assert failed.verified is False and "checksum mismatch" in failed.verification


def test_the_list_lets_choose_pick_the_newest_verified_backup(store: BackupStore) -> None:
    chosen, why = choose(store.list(dataset="orders"))
    assert (chosen.kind, chosen.taken_at) == ("daily", 1_700_001_000.0)
    assert "daily" in why


def test_a_data_set_with_no_backups_lists_none(store: BackupStore) -> None:
    assert store.list(dataset="invoices") == []


def test_a_backup_found_damaged_at_restore_lists_as_not_verified_from_then_on(
        store: BackupStore) -> None:
    _, passed, _ = store.list(dataset="orders")
    said = store.record_damage(passed, reason="authentication failed at chunk 3",
                               actor="run r1")
    assert said.startswith("marked not verified")
    _, again, _ = store.list(dataset="orders")
    assert (again.id, again.verified) == (passed.id, False)
    assert again.verification == "restore failed: authentication failed at chunk 3"
    with pytest.raises(NoRestorableBackup):  # the next restore does not choose it
        choose(store.list(dataset="orders"))


@pytest.fixture(params=KINDS)
def intact_and_lost(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> tuple[BackupStore, Backup, Backup]:
    """A store with two backups of `orders`: the newer one's payload is gone."""
    kind: str = request.param
    if kind == "memory":
        store: BackupStore = FakeBackupStore(FakeBackupStore.Options.model_validate({
            "key": f"contract-{next(_N)}", "backups": [
                {"id": "lost", "dataset": "orders", "takenAt": 2000, "verified": True,
                 "damaged": "missing"},
                {"id": "intact", "dataset": "orders", "takenAt": 1000, "verified": True}]}))
        lost, intact = store.list(dataset="orders")
        return store, intact, lost
    request.getfixturevalue("backup_key")
    real: S3BackupStore | FilesystemBackupStore
    if kind == "filesystem":
        real = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
            {"path": str(tmp_path / "catalog"), "encryptionKey": {"fromEnv": KEY_ENV}}),
            secrets=Secrets())
    else:
        options = request.getfixturevalue("store_options")
        real = S3BackupStore(S3BackupStore.Options.model_validate(options), secrets=Secrets())
    source = tmp_path / "source"
    source.mkdir()
    (source / "PG_VERSION").write_bytes(os.urandom(5000))
    intact = real.add_directory(source, dataset="orders", kind="daily", taken_at=1000,
                                actor="cron")
    lost = real.add_directory(source, dataset="orders", kind="daily", taken_at=2000,
                              actor="cron")
    key = lost.meta["objects"][0]["key"]
    if isinstance(real, S3BackupStore):
        real.objects.client.delete_object(Bucket=real.objects.bucket,
                                          Key=real.objects.prefix + key)
    else:
        (tmp_path / "catalog" / key).unlink()
    return real, intact, lost


def test_the_integrity_pass_passes_an_intact_backup_and_fails_a_lost_one(
        intact_and_lost: tuple[BackupStore, Backup, Backup]) -> None:
    store, intact, lost = intact_and_lost
    assert store.check_integrity(intact).startswith(f"{intact.id}: ")
    with pytest.raises(DamagedBackup, match=f"{lost.id}: .* is missing from the store"):
        store.check_integrity(lost)

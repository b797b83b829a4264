"""The in-memory restorer is a fenced target like the real ones: a cancelled step writes
nothing, each restore is recorded with the fencing token and holder of the step attempt
that made it, and a deposed holder (an older token) cannot restore over the new one. Like
the real restorers, a target remembers its backup: a retry of it answers
`alreadyRestored` and records nothing, another backup is refused unless `overwrite`. A
backup marked damaged fails as a real damaged payload does (`DamagedBackup`, nothing
written), after the fence was checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import fencing
from controller.backups import DamagedBackup
from controller.model import Backup, PermanentError, Target
from controller.testing import FakeBackupStore, FakeRestorer

BACKUP = Backup(id="b1", dataset="orders", kind="daily", taken_at=0.0, location="x",
                verified=True)
INTO = Target(host=None, path="/srv/pg/data")
OTHER = Target(host=None, path="/srv/pg/other")


@pytest.fixture(params=["memory", "stateFile"])
def restorer(request: pytest.FixtureRequest, tmp_path: Path) -> FakeRestorer:
    extra = {"stateFile": str(tmp_path / "world.json")} if request.param == "stateFile" else {}
    return FakeRestorer(FakeRestorer.Options.model_validate({"key": "db", **extra}))


def test_a_cancelled_step_restores_nothing(restorer: FakeRestorer) -> None:
    fence = fencing.Fence(4, "controller-a")
    fence.cancel("step restore-db timed out after 30 s")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled, match="timed out"):
        restorer.restore(backup=BACKUP, into=INTO)
    assert restorer.restored() == []


def test_each_restore_carries_its_token_and_holder(restorer: FakeRestorer) -> None:
    restorer.restore(backup=BACKUP, into=INTO)  # outside any step: no token
    with fencing.scope(fencing.Fence(5, "controller-a")):
        restorer.restore(backup=BACKUP, into=OTHER)
    assert restorer.restored() == [
        {"backup": "b1", "into": "/srv/pg/data", "token": None, "holder": None},
        {"backup": "b1", "into": "/srv/pg/other", "token": 5, "holder": "controller-a"}]


def test_a_restore_with_an_older_token_is_refused(restorer: FakeRestorer) -> None:
    with fencing.scope(fencing.Fence(8, "controller-b")):
        restorer.restore(backup=BACKUP, into=INTO)
    with fencing.scope(fencing.Fence(7, "controller-a")), \
            pytest.raises(fencing.StaleToken, match=r"token 7 .*older than token 8"):
        restorer.restore(backup=BACKUP, into=OTHER)
    with fencing.scope(fencing.Fence(8, "controller-b")):
        restorer.restore(backup=BACKUP, into=OTHER)  # the same holder's: accepted
    restorer.restore(backup=BACKUP, into=Target(host="db-2", path="/srv/pg/data"))  # a
    # person's, outside any step: accepted
    assert [(r["token"], r["holder"]) for r in restorer.restored()] == [
        (8, "controller-b"), (8, "controller-b"), (None, None)]


def test_a_finished_restore_retried_is_already_restored_and_recorded_once(
        restorer: FakeRestorer) -> None:
    with fencing.scope(fencing.Fence(1, "controller-a", label="run-1/restore")):
        first = restorer.restore(backup=BACKUP, into=INTO)
    with fencing.scope(fencing.Fence(2, "controller-b", label="run-1/restore")):
        again = restorer.restore(backup=BACKUP, into=INTO)
    assert (first["alreadyRestored"], again["alreadyRestored"]) == (False, True)
    assert [r["token"] for r in restorer.restored()] == [1]


def test_another_backup_is_refused_naming_what_the_target_holds_unless_overwrite(
        restorer: FakeRestorer) -> None:
    restorer.restore(backup=BACKUP, into=INTO)
    newer = Backup(id="b2", dataset="orders", kind="daily", taken_at=1.0, location="y",
                   verified=True)
    with pytest.raises(PermanentError, match=r"/srv/pg/data on localhost is not empty; it "
                                             r"holds backup b1"):
        restorer.restore(backup=newer, into=INTO)
    replace = Target(host=None, path=INTO.path, options={"overwrite": True})
    assert restorer.restore(backup=newer, into=replace)["alreadyRestored"] is False
    assert [r["backup"] for r in restorer.restored()] == ["b1", "b2"]


def test_a_damaged_backup_fails_as_damaged_and_writes_nothing(restorer: FakeRestorer) -> None:
    store = FakeBackupStore(FakeBackupStore.Options.model_validate({"backups": [
        {"id": "d2", "dataset": "orders", "takenAt": 2, "verified": True, "damaged": "corrupt"},
        {"id": "d1", "dataset": "orders", "takenAt": 1, "verified": True,
         "damaged": "missing"}]}))
    corrupt, missing = store.list(dataset="orders")
    assert store.check_integrity(corrupt) == "d2: mem:d2 as cataloged"  # same size: passes
    with pytest.raises(DamagedBackup, match="d1: its payload mem:d1 is missing"):
        store.check_integrity(missing)
    with pytest.raises(DamagedBackup, match="d2: authentication failed"):
        restorer.restore(backup=corrupt, into=INTO)
    fence = fencing.Fence(4, "controller-a")
    fence.cancel("lease lost")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled):  # the fence comes first
        restorer.restore(backup=corrupt, into=INTO)
    assert restorer.restored() == []
    restorer.restore(backup=BACKUP, into=INTO)  # the target is as it was: a good one lands
    assert [r["backup"] for r in restorer.restored()] == ["b1"]

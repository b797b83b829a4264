"""A restore step that was in flight resumes, against real PostgreSQL 15, pgBackRest, moto's
S3 server and sshd: after the process running it was killed mid-stream, the retry clears
that restore's partial work (recognised by its marker) and restores; after a restore that
finished but was not recorded, the retry finds the node running at the target with the
expected backup, validates it and reports it as already restored, moving no data; a
crash at any point of the swap is undone to the target as it was; a removal of the
replaced data cut short is finished by the next restore onto the target; what is not the
controller's own (another backup's finished restore, directories in its names without a
marker) is refused and left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import fencing
from controller.backups.hosts import LocalHost
from controller.backups.node import Node, TargetOptions
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.model import Backup, PermanentError
from controller.secrets import Secrets

from .conftest import ROWS, VALIDATION, fingerprint
from .test_restore_aside import kill_mid_stream
from .test_restore_cancel import _ssh, _target, _verified_backup


class _Counting:
    """The real store, counting the payloads opened."""

    def __init__(self, store: S3BackupStore):
        self.store, self.opened = store, 0

    @contextlib.contextmanager
    def open_payload(self, backup: Backup) -> Iterator[Any]:
        self.opened += 1
        with self.store.open_payload(backup) as reader:
            yield reader


def _fresh(path: Path, over_ssh: bool, sshd: SshServer) -> Any:
    into = _target(path, over_ssh, sshd, VALIDATION)
    return dataclasses.replace(into, options={**into.options, "overwrite": False})


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])
def test_a_restore_killed_mid_stream_is_restored_again_by_its_retry(
        over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
        source_pg: PostgresServer, sshd: SshServer, tmp_path: Path, places: Path) -> None:
    backup = _verified_backup(s3_store, source_pg)
    target = places / f"resume-{over_ssh}" / "data"
    into = _fresh(target, over_ssh, sshd)
    ssh = _ssh(sshd, tmp_path) if over_ssh else {}
    kill_mid_stream(backup, into, store_options, ssh)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": store_options}, **ssh}), secrets=Secrets(),
        store=s3_store)
    try:
        evidence = restorer.restore(backup=backup, into=into)  # no overwrite needed
        assert evidence["resumed"] == (f"undid an unfinished restore (receiving {backup.id})"
                                       " and restored again")
        assert evidence["validation"][0]["value"] == str(ROWS)
        assert evidence["alreadyRestored"] is False and evidence["replaced"] is None
        assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(
            "data")) == ["data", "data.restore-state"]
    finally:
        restorer.stop(into=into)


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])
def test_a_finished_restore_retried_is_recognised_and_not_restored_twice(
        over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
        source_pg: PostgresServer, sshd: SshServer, tmp_path: Path, places: Path) -> None:
    backup = _verified_backup(s3_store, source_pg)
    into = _fresh(places / f"twice-{over_ssh}" / "data", over_ssh, sshd)
    counting = _Counting(s3_store)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": store_options},
        **(_ssh(sshd, tmp_path) if over_ssh else {})}), secrets=Secrets(),
        store=counting)  # type: ignore[arg-type]
    try:
        with fencing.scope(fencing.Fence(1, "controller-a", label="run-1/restore")):
            first = restorer.restore(backup=backup, into=into)
        # the controller died before recording it; the step runs again, on another lease
        with fencing.scope(fencing.Fence(2, "controller-b", label="run-1/restore")):
            again = restorer.restore(backup=backup, into=into)
        assert again["alreadyRestored"] is True and again["pid"] == first["pid"]
        assert again["backup"] == backup.id and "bytes" not in again
        assert again["validation"][0]["value"] == str(ROWS)
        assert counting.opened == 2  # the first restore's first chunk, then its stream
    finally:
        restorer.stop(into=into)


def test_a_finished_pgbackrest_restore_retried_is_recognised(
        s3_store: S3BackupStore, source_pg: PostgresServer, pgbackrest_conf: Path,
        stanza: str, places: Path) -> None:
    backup = dataclasses.replace(register_pgbackrest(
        s3_store, dataset="orders", kind="continuous", actor="cron:hourly",
        config=str(pgbackrest_conf), stanza=stanza), verified=True)
    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(pgbackrest_conf), "stanza": stanza}), secrets=Secrets())
    into = _fresh(places / "twice-pgbr" / "data", False, None)  # type: ignore[arg-type]
    try:
        first = restorer.restore(backup=backup, into=into)
        again = restorer.restore(backup=backup, into=into)
        assert again["alreadyRestored"] is True and again["pid"] == first["pid"]
        assert "fetch" not in again["phases"]
    finally:
        restorer.stop(into=into)
    # stopped, it is data like any other: the retry refuses it, naming what it holds
    with pytest.raises(PermanentError, match=f"it holds backup {backup.id}"):
        restorer.restore(backup=backup, into=into)


# --- a crash at each point of the swap, put back by the next attempt's prepare ----------


def _layout(places: Path, name: str) -> tuple[Node, Path]:
    target = places / name / "data"
    target.parent.mkdir(parents=True)
    target.parent.chmod(0o755)
    node = Node(LocalHost(), str(target), TargetOptions.model_validate(
        {"socketDir": str(places / "sock"), "overwrite": True}), backup="b-1", run="run-1/r")
    return node, target


def _marker(node: Node, state: str, inode: int | str) -> None:
    Path(node.layout.marker).write_text(f"state={state}\nbackup=b-1\nrun=run-1/r\n"
                                        f"inode={inode}\n")


def _crash(step: str, original: bool) -> Callable[[Node, Path], None]:
    """Leave what a restore that died at `step` of the swap leaves."""

    def at(node: Node, target: Path) -> None:
        side, aside = Path(node.layout.side), Path(node.layout.aside)
        side.mkdir()
        (side / "PG_VERSION").write_text("15\n")  # restored files
        _marker(node, "swapped", side.stat().st_ino)
        if step in ("aside", "swapped") and original:
            target.rename(aside)
        if step == "swapped":
            side.rename(target)

    return at


@pytest.mark.parametrize("step", ["marker", "aside", "swapped"])
@pytest.mark.parametrize("original", [True, False], ids=["old-data", "no-target"])
def test_a_crash_during_the_swap_is_undone_by_the_next_attempt(
        step: str, original: bool, places: Path) -> None:
    node, target = _layout(places, f"crash-{step}-{original}")
    if original:
        target.mkdir()
        (target / "old").write_text("the data before the restore")
    before = fingerprint(target) if original else None
    _crash(step, original)(node, target)
    node.prepare()  # the retry: it undoes the crashed attempt, then makes its own side dir
    assert node.cleared == "swapped b-1"
    assert (fingerprint(target) if target.exists() else None) == before
    assert not Path(node.layout.aside).exists()
    assert Path(node.layout.side).is_dir() and not any(Path(node.layout.side).iterdir())
    node.undo()  # and this attempt's own work, undone in turn
    assert sorted(p.name for p in target.parent.iterdir()) == (["data"] if original else [])


def test_a_removal_of_the_replaced_data_cut_short_is_finished_by_the_next_restore(
        places: Path) -> None:
    node, target = _layout(places, "removal")
    target.mkdir()
    (target / "PG_VERSION").write_text("15\n")  # the restored node, committed
    _marker(node, "done", target.stat().st_ino)
    aside = Path(node.layout.aside)  # what the background removal had not removed yet
    (aside / "base").mkdir(parents=True)
    (aside / "base" / "1").write_text("the replaced cluster")
    node.prepare()  # the next restore onto the target (overwrite): removal finished first
    assert not aside.exists() and node.cleared is None
    assert [p.name for p in target.iterdir()] == ["PG_VERSION"]
    node.undo()
    assert [p.name for p in target.parent.iterdir()] == ["data"]


@pytest.mark.parametrize("name", ["data.restoring", "data.replaced"])
def test_directories_in_its_names_without_a_marker_are_refused_and_kept(
        name: str, places: Path) -> None:
    node, target = _layout(places, f"inway-{name}")
    stray = target.parent / name
    stray.mkdir()
    (stray / "keep").write_text("someone's")
    with pytest.raises(PermanentError, match=f"{stray} on localhost is in the way"):
        node.prepare()
    assert (stray / "keep").read_text() == "someone's" and not target.exists()


def test_another_backups_finished_restore_is_refused_without_overwrite(
        places: Path) -> None:
    node, target = _layout(places, "other")
    target.mkdir()
    (target / "PG_VERSION").write_text("15\n")
    _marker(node, "done", target.stat().st_ino)
    other = Node(LocalHost(), str(target), TargetOptions.model_validate(
        {"socketDir": str(places / "sock")}), backup="b-2")
    with pytest.raises(PermanentError, match=r"is not empty .*it holds backup b-1"):
        other.prepare()
    assert [p.name for p in target.iterdir()] == ["PG_VERSION"]

"""A restore never destroys what it replaces: against real PostgreSQL 15, moto's S3 server
and sshd, locally and over SSH, a target holding an old cluster (`overwrite: true`) keeps
it, every entry unchanged, and the old node starts and reads its row back, when the payload
was damaged after its verification, when the stream is cut mid-way, when the process
running the restore is killed with SIGKILL mid-stream, when the restored node cannot
start, and when it fails validation; and a restore that passes replaces it, the restored
node running at the target, the replaced directory removed only then (named in the
evidence), in the background: the restore does not wait for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.backups import crypto
from controller.backups.node import RestoreFailed
from controller.backups.restore import BaseBackupRestorer
from controller.backups.s3 import S3BackupStore
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.model import Backup, Target
from controller.secrets import Secrets

from .conftest import OLD_NOTE, ROWS, OldCluster
from .test_restore_cancel import (
    MiB,
    _left_as_it_was,
    _postgres_on,
    _ssh,
    _target,
    _verified_backup,
)

ROOT = Path(__file__).resolve().parents[3]
SIDES = pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])


@dataclasses.dataclass
class Scene:
    """A verified backup, and the old cluster at the target it is restored onto."""

    backup: Backup
    old: OldCluster
    before: dict[str, Any]  # the old cluster's fingerprint before the restore
    store: S3BackupStore
    store_options: dict[str, Any]
    over_ssh: bool
    sshd: SshServer
    ssh: dict[str, Any]  # the restorer's `ssh` option ({} for a local restore)

    def target(self, validation: list[Any] | None = None) -> Target:
        return _target(self.old.path, self.over_ssh, self.sshd, validation or [])

    def restorer(self, store: Any = None) -> BaseBackupRestorer:
        return BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
            "store": {"kind": "s3", "options": self.store_options}, **self.ssh}),
            secrets=Secrets(), store=self.store if store is None else store)

    def left_as_it_was(self) -> None:
        _left_as_it_was(self.old, self.before)


@pytest.fixture
def scene(over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
          source_pg: PostgresServer, sshd: SshServer, tmp_path: Path, places: Path,
          old_cluster: Callable[[Path], OldCluster]) -> Scene:
    old = old_cluster(places / "old" / "data")
    return Scene(backup=_verified_backup(s3_store, source_pg), old=old,
                 before=old.fingerprint(), store=s3_store, store_options=store_options,
                 over_ssh=over_ssh, sshd=sshd, ssh=_ssh(sshd, tmp_path) if over_ssh else {})


class _CutReader:
    def __init__(self, inner: Any, after: int):
        self.inner, self.left = inner, after

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("connection to the backup store reset by peer")
        data: bytes = self.inner.read(n)
        self.left -= len(data)
        return data


class _CutStore:
    """The real payload, its connection lost after `after` bytes."""

    def __init__(self, store: S3BackupStore, after: int):
        self.store, self.after = store, after

    @contextlib.contextmanager
    def open_payload(self, backup: Backup) -> Iterator[_CutReader]:
        with self.store.open_payload(backup) as reader:
            yield _CutReader(reader, self.after)


# the restore in a process of its own, its payload read at a crawl after 3 MiB
CHILD = """
import json, sys
from controller.backups.restore import BaseBackupRestorer
from controller.backups.s3 import S3BackupStore, S3StoreOptions
from controller.model import Backup, Target
from controller.secrets import Secrets
from tests.contract.backups.test_restore_cancel import _SlowStore
a = json.loads(sys.argv[1])
store = S3BackupStore(S3StoreOptions.model_validate(a["store"]), secrets=Secrets())
restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
    {"store": {"kind": "s3", "options": a["store"]}, **a["ssh"]}), secrets=Secrets(),
    store=_SlowStore(store, pace=0.5))
restorer.restore(backup=Backup(**a["backup"]), into=Target(**a["into"]))
"""


def removed_eventually(path: Path) -> None:
    """Wait for the background removal of `path` (a wait, not a timed assertion: a slow
    disk only makes it longer)."""
    deadline = time.monotonic() + 120
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not path.exists(), f"{path} was never removed"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def kill_mid_stream(backup: Backup, into: Target, store_options: dict[str, Any],
                    ssh: dict[str, Any]) -> None:
    """Run the restore in a child process; SIGKILL it once the side directory holds 2 MiB
    of the stream, and wait until nothing works in that directory any more."""
    side = Path(f"{into.path}.restoring")
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({
        "store": store_options, "ssh": ssh, "backup": dataclasses.asdict(backup),
        "into": dataclasses.asdict(into)})], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while _size(side) < 2 * MiB and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, "the restore ended before it was killed"
        assert _size(side) >= 2 * MiB
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 60
    while _postgres_on(side, anything=True) and time.monotonic() < deadline:
        time.sleep(0.05)  # tar sees the end of its input; the sessions end
    assert _postgres_on(side, anything=True) == []


@SIDES
def test_a_payload_damaged_after_verification_leaves_the_old_data(scene: Scene) -> None:
    client = scene.store.objects.client  # type: ignore[attr-defined]
    bucket = scene.store_options["bucket"]
    full = f"{scene.store_options['prefix']}/{scene.backup.meta['objects'][0]['key']}"
    data = bytearray(client.get_object(Bucket=bucket, Key=full)["Body"].read())
    assert len(data) > 4 * crypto.DEFAULT_CHUNK  # the damage is chunks into the stream
    data[len(data) * 3 // 4] ^= 0x01
    client.put_object(Bucket=bucket, Key=full, Body=bytes(data))
    with pytest.raises(crypto.DecryptionError):
        scene.restorer().restore(backup=scene.backup, into=scene.target())
    scene.left_as_it_was()


@SIDES
def test_a_stream_cut_mid_way_leaves_the_old_data(scene: Scene) -> None:
    restorer = scene.restorer(_CutStore(scene.store, 5 * MiB))
    with pytest.raises(ConnectionResetError, match="reset by peer"):
        restorer.restore(backup=scene.backup, into=scene.target())
    scene.left_as_it_was()


@SIDES
def test_a_restore_killed_mid_stream_leaves_the_old_data(scene: Scene) -> None:
    old = scene.old
    kill_mid_stream(scene.backup, scene.target(), scene.store_options, scene.ssh)
    assert old.fingerprint() == scene.before
    # what the killed restore left is beside the target, named by its marker
    assert sorted(old.leftovers()) == ["data.restore-state", "data.restoring"]
    assert "state=receiving" in (old.path.parent / "data.restore-state").read_text()
    assert old.read() == OLD_NOTE


@SIDES
def test_a_restore_failing_validation_leaves_the_old_data(scene: Scene) -> None:
    wrong = [{"name": "orders row count", "sql": "SELECT count(*) FROM orders",
              "expect": str(ROWS + 1)}]
    with pytest.raises(RestoreFailed, match=f"got '{ROWS}', expected '{ROWS + 1}'") as err:
        scene.restorer().restore(backup=scene.backup, into=scene.target(wrong))
    assert err.value.phase == "validate"
    scene.left_as_it_was()  # the restored node ran at the target; stopped, undone


@SIDES
def test_a_restored_node_that_cannot_start_leaves_the_old_data(scene: Scene) -> None:
    # PostgreSQL refuses the setting and exits: the start fails at once, with its log
    into = scene.target()
    into.options["settings"] = {"max_connections": "-5"}
    with pytest.raises(RestoreFailed, match="max_connections") as err:
        scene.restorer().restore(backup=scene.backup, into=into)
    assert err.value.phase == "start"
    scene.left_as_it_was()


@SIDES
def test_a_restore_that_passes_replaces_the_old_data_only_then(scene: Scene) -> None:
    from .conftest import VALIDATION

    old, into, restorer = scene.old, scene.target(VALIDATION), scene.restorer()
    try:
        evidence = restorer.restore(backup=scene.backup, into=into)
        # the replaced cluster goes after the commit, without the restore waiting for it
        assert evidence["replaced"] == {"path": f"{old.path}.replaced",
                                        "removal": "in the background"}
        assert evidence["validation"][0]["value"] == str(ROWS)
        assert evidence["alreadyRestored"] is False and evidence["resumed"] is None
        assert int((old.path / "postmaster.pid").read_text().split()[0]) == evidence["pid"]
        assert os.readlink(f"/proc/{evidence['pid']}/cwd") == str(old.path)
        removed_eventually(Path(f"{old.path}.replaced"))
        assert old.leftovers() == ["data.restore-state"]  # it names the backup restored
        assert f"backup={scene.backup.id}" in (old.path.parent / "data.restore-state").read_text()
    finally:
        restorer.stop(into=into)

"""The `Restorer` contract, run through the same tests for the in-memory fake and the
real restorers: a base backup restored locally and over SSH (sshd on loopback, host key
pinned), and a pgBackRest set, each from real PostgreSQL 15 backups.

What a restore step relies on: only a verified backup is restored (a permanent error
names it, before anything is touched); a verified one is restored and its evidence
carries the keys the reports and the RPO check read, its validation queries passed; a
target that already holds data (here: another backup's restore, its server running) is
refused, naming it, and left as it was; a retry of a restore that finished (its answer
lost, or the controller died before recording it; the step runs again on a new lease) is
recognised and answered `alreadyRestored`, restoring nothing twice; a step cancelled
before the restore touches nothing. (Resuming after a crash mid-stream, over SSH and
pgBackRest: test_restore_resume.py.)
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller import fencing
from controller.backups import Restorer
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest, take_basebackup
from controller.drill.servers.base import free_port
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.model import Backup, PermanentError, Target
from controller.secrets import Secrets
from controller.testing import FakeRestorer

from .conftest import ROWS, VALIDATION

KINDS = ("memory", "basebackup-local", "basebackup-ssh", "pgbackrest")
_N = itertools.count()
EVIDENCE_KEYS = {"backup", "dataset", "host", "path", "rpoSeconds", "rpoMet", "phases",
                 "validation", "seconds", "triggeredBy", "alreadyRestored", "resumed"}


@dataclass
class Restore:
    kind: str
    restorer: Restorer
    format: str  # the backups this restorer restores
    backup: Callable[[], Backup]  # a new backup of `orders` (marked verified)
    target: Callable[[str], Target]  # a restore target by name (host and options)
    holds_data: Callable[[str], bool]  # whether a restore wrote into that target


def _options(path: Path, **extra: Any) -> dict[str, Any]:
    return {"port": free_port(), "socketDir": str(path.parent / "sock"),
            "validation": VALIDATION, "rpo": 3600, "actor": "alice", **extra}


@pytest.fixture(params=KINDS)
def restore(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Restore]:
    kind: str = request.param
    if kind == "memory":
        fake = FakeRestorer(FakeRestorer.Options(key=f"contract-{next(_N)}"))
        yield Restore(
            kind, fake, "basebackup",
            backup=lambda: Backup(id=f"orders-daily-{next(_N)}", dataset="orders",
                                  kind="daily", taken_at=time.time() - 60,
                                  location="mem:orders-daily", verified=True),
            target=lambda name: Target(host=None, path=str(tmp_path / name),
                                       options={"rpo": 3600, "actor": "alice"}),
            holds_data=lambda name: any(r["into"] == str(tmp_path / name)
                                        for r in fake.restored()))
        return
    store: S3BackupStore = request.getfixturevalue("s3_store")
    places: Path = request.getfixturevalue("places")  # reachable by the postgres OS user
    real: BaseBackupRestorer | PgBackRestRestorer
    take: Callable[[], Backup]
    sshd: SshServer | None = None
    if kind == "pgbackrest":
        conf: Path = request.getfixturevalue("pgbackrest_conf")
        stanza: str = request.getfixturevalue("stanza")
        real = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
            {"config": str(conf), "stanza": stanza}), secrets=Secrets())

        def take() -> Backup:
            return register_pgbackrest(store, dataset="orders", kind="continuous",
                                       actor="cron:hourly", config=str(conf), stanza=stanza)
    else:
        source: PostgresServer = request.getfixturevalue("source_pg")
        ssh: dict[str, Any] = {}
        if kind == "basebackup-ssh":
            sshd = request.getfixturevalue("sshd")
            (tmp_path / "key").write_text(sshd.client_key.read_text())
            (tmp_path / "known").write_text(sshd.known_hosts)
            ssh = {"ssh": {"user": sshd.user, "privateKey": {"fromFile": str(tmp_path / "key")},
                           "knownHosts": {"fromFile": str(tmp_path / "known")}}}
        real = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
            {"store": {"kind": "s3", "options": request.getfixturevalue("store_options")},
             **ssh}), secrets=Secrets(), store=store)

        def take() -> Backup:
            return take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                                   host=str(source.sock), port=source.port)

    targets: dict[str, Target] = {}

    def target(name: str) -> Target:  # one per name: a retry goes to the same target
        path = places / name
        if name in targets:
            return targets[name]
        if sshd is not None:
            targets[name] = Target(host="127.0.0.1", path=str(path),
                                   options=_options(path, sshPort=sshd.port))
        else:
            targets[name] = Target(host=None, path=str(path), options=_options(path))
        return targets[name]

    # the restore's own checks are under test, not verification: mark it verified
    yield Restore(kind, real, real.format,
                  backup=lambda: dataclasses.replace(take(), verified=True), target=target,
                  holds_data=lambda name: (places / name).exists()
                  and any((places / name).iterdir()))
    for into in targets.values():
        real.stop(into=into)  # the server a restore started, by its PID


@pytest.mark.parametrize("verified", [None, False], ids=["never-verified", "failed"])
def test_an_unverified_backup_is_never_restored(restore: Restore,
                                                verified: bool | None) -> None:
    backup = Backup(id="orders-b1", dataset="orders", kind="daily", taken_at=0.0,
                    location="x", verified=verified, meta={"format": restore.format},
                    verification="checksum mismatch" if verified is False else "")
    with pytest.raises(PermanentError, match="backup orders-b1 is not verified"):
        restore.restorer.restore(backup=backup, into=restore.target("data"))
    assert not restore.holds_data("data")


def test_a_verified_backup_is_restored_with_the_evidence_reports_read(
        restore: Restore) -> None:
    backup = restore.backup()
    evidence = restore.restorer.restore(backup=backup, into=restore.target("data"))
    assert set(evidence) >= EVIDENCE_KEYS
    assert evidence["backup"] == backup.id and evidence["dataset"] == "orders"
    assert evidence["triggeredBy"] == "alice" and evidence["rpoMet"] is True
    assert all(q["passed"] for q in evidence["validation"])
    if evidence["validation"]:  # the real ones count the restored rows
        assert evidence["validation"][0]["value"] == str(ROWS)
    assert restore.holds_data("data")


def test_a_target_holding_data_is_refused_naming_it_and_left_as_it_was(
        restore: Restore) -> None:
    backup = restore.backup()
    with fencing.scope(fencing.Fence(1, "controller-a", label="run-1/restore")):
        into = restore.target("data")
        first = restore.restorer.restore(backup=backup, into=into)
        time.sleep(1.05)  # backup names carry whole seconds: the next needs a later one
        other = restore.backup()
        with pytest.raises(PermanentError, match=re.escape(into.path)):
            restore.restorer.restore(backup=other, into=into)
    assert restore.holds_data("data") and first["backup"] == backup.id


def test_a_retry_of_a_finished_restore_is_answered_already_restored(
        restore: Restore) -> None:
    backup = restore.backup()
    into = restore.target("data")
    with fencing.scope(fencing.Fence(1, "controller-a", label="run-1/restore")):
        first = restore.restorer.restore(backup=backup, into=into)
    # the answer was lost; the step runs again, on the next lease
    with fencing.scope(fencing.Fence(2, "controller-b", label="run-1/restore")):
        again = restore.restorer.restore(backup=backup, into=into)
    assert first["alreadyRestored"] is False and first["resumed"] is None
    assert again["alreadyRestored"] is True and again["backup"] == backup.id
    assert set(again) >= EVIDENCE_KEYS and "fetch" not in again["phases"]
    assert all(q["passed"] for q in again["validation"])
    assert restore.holds_data("data")


def test_a_cancelled_step_restores_nothing(restore: Restore) -> None:
    backup = Backup(id="orders-b1", dataset="orders", kind="daily", taken_at=0.0,
                    location="x", verified=True, meta={"format": restore.format})
    fence = fencing.Fence(3, "controller-a", label="run-1/restore")
    fence.cancel("lease lost to controller-b")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled, match="lease lost"):
        restore.restorer.restore(backup=backup, into=restore.target("data"))
    assert not restore.holds_data("data")

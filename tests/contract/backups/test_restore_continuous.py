"""A continuous (WAL-archived) pgBackRest backup restores with the real time it was chosen
for, against real PostgreSQL 15 archiving into pgBackRest: rows committed after the base
backup and archived are in the restored node (the archive is replayed to its end by
default, not only to the end of the base backup); the RPO is measured from the last
replayed transaction against the fault (or the restore's start), not from the catalog's
takenAt; a named time stops the replay there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any

from controller.backups.restore import PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest
from controller.drill.servers.base import free_port
from controller.drill.servers.postgres import PostgresServer, as_user
from controller.model import Backup, Target
from controller.secrets import Secrets

from .conftest import VALIDATION


def _continuous(store: S3BackupStore, conf: Path, stanza: str) -> Backup:
    return dataclasses.replace(register_pgbackrest(
        store, dataset="orders", kind="continuous", actor="cron:hourly", config=str(conf),
        stanza=stanza), verified=True)


def _commit(pg: PostgresServer, note: str) -> float:
    """Commit a row after the base backup; return when (the server's clock)."""
    pg.psql("CREATE TABLE IF NOT EXISTS after_base (note text PRIMARY KEY, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())")
    return float(pg.psql(f"INSERT INTO after_base (note) VALUES ('{note}') "
                         "RETURNING extract(epoch FROM at)"))


def _archive(conf: Path, stanza: str) -> None:
    """Switch WAL and wait until it is in the archive (`pgbackrest check` does both)."""
    subprocess.run(as_user(["pgbackrest", f"--config={conf}", f"--stanza={stanza}",
                            "--log-level-console=error", "check"]), check=True,
                   capture_output=True)


def _into(path: Path, **extra: Any) -> Target:
    return Target(host=None, path=str(path), options={
        "port": free_port(), "socketDir": str(path.parent / "sock"), "rpo": 3600,
        "validation": [*VALIDATION, *extra.pop("validation", [])], **extra})


def _found(note: str, expect: str) -> dict[str, str]:
    return {"name": f"row {note}", "sql": f"SELECT count(*) FROM after_base WHERE note = "
                                          f"'{note}'", "expect": expect}


def test_rows_committed_after_the_base_backup_and_archived_are_restored(
        s3_store: S3BackupStore, source_pg: PostgresServer, pgbackrest_conf: Path,
        stanza: str, places: Path) -> None:
    backup = _continuous(s3_store, pgbackrest_conf, stanza)
    time.sleep(1.1)  # a commit clearly after the base backup's end (takenAt)
    note = f"late-{time.time_ns()}"
    committed = _commit(source_pg, note)
    assert committed > backup.taken_at
    _archive(pgbackrest_conf, stanza)
    fault = time.time()
    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(pgbackrest_conf), "stanza": stanza}), secrets=Secrets())
    target = places / "continuous" / "data"
    into = _into(target, validation=[_found(note, "1")], faultAt=fault)
    try:
        evidence = restorer.restore(backup=backup, into=into)
        assert evidence["recoveryTarget"] == "latest"
        assert [q["value"] for q in evidence["validation"]][-1] == "1"  # the late row
        as_of = dt.datetime.strptime(evidence["dataAsOf"], "%Y-%m-%d %H:%M:%S UTC").replace(
            tzinfo=dt.UTC).timestamp()
        assert as_of >= int(committed) and evidence["dataAsOfSource"] == \
            "last replayed transaction"
        assert evidence["rpoFrom"] == "faultAt"
        assert abs(evidence["rpoSeconds"] - (fault - as_of)) < 1.0
        assert evidence["rpoSeconds"] < fault - backup.taken_at  # not the base backup's age
        # the WAL it replays later is fetched for the target, not the side directory
        conf = (target / "postgresql.auto.conf").read_text()
        assert f"--pg1-path={target} archive-get" in conf
    finally:
        restorer.stop(into=into)


def test_a_named_time_stops_the_replay_there(
        s3_store: S3BackupStore, source_pg: PostgresServer, pgbackrest_conf: Path,
        stanza: str, places: Path) -> None:
    backup = _continuous(s3_store, pgbackrest_conf, stanza)
    time.sleep(1.1)
    before, after = f"before-{time.time_ns()}", f"after-{time.time_ns()}"
    first = _commit(source_pg, before)
    time.sleep(1.1)
    second = _commit(source_pg, after)
    _archive(pgbackrest_conf, stanza)
    stop = dt.datetime.fromtimestamp((first + second) / 2, dt.UTC)
    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(pgbackrest_conf), "stanza": stanza}), secrets=Secrets())
    into = _into(places / "pitr" / "data", recoveryTarget=stop.isoformat(),
                 validation=[_found(before, "1"), _found(after, "0")])
    try:
        evidence = restorer.restore(backup=backup, into=into)
        assert [q["passed"] for q in evidence["validation"]] == [True] * 4
    finally:
        restorer.stop(into=into)

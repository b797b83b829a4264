"""A restore whose step is cancelled (its timeout passed, or the lease was lost) stops,
against real PostgreSQL 15, pgBackRest, moto's S3 server and sshd, locally and over SSH.

The executor runs a step's work inside `fencing.scope(fence)` and calls `fence.cancel`
from another thread; here a thread does the same. Whatever the phase (the payload
streaming into `tar`, PostgreSQL already started and being validated, `pgbackrest
restore` running), the restore stops and raises `fencing.Cancelled`, no PostgreSQL runs
on the target afterwards, and the target is left exactly as it was: each target holds an
old cluster the restore was allowed to replace (`overwrite: true`), and after the cancel
every entry of it is unchanged, nothing the restore used beside it remains, the old node
starts and its row reads back; the cancel flag it used on the host is gone. How fast it
stops is a figure, not an assertion (a busy host is slower):
`tests/benchmarks/bench_backups.py` (c) measures it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import fencing
from controller.backups.restore import BaseBackupRestorer, PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest, take_basebackup
from controller.drill.servers.base import free_port
from controller.drill.servers.postgres import PostgresServer, as_user
from controller.drill.servers.sshd import SshServer
from controller.model import Backup, Target
from controller.secrets import Secrets

from .conftest import OLD_NOTE, VALIDATION, OldCluster

MiB = 1 << 20
SLOW_QUERY = {"name": "slow business check", "sql": "SELECT 1 FROM pg_sleep(120)",
              "expect": "1"}


class _SlowReader:
    """The real decrypted payload, read at a crawl once `after` bytes went through, so a
    cancel lands mid-stream (a thousand-fold larger backup on a slow link, in short)."""

    def __init__(self, inner: Any, owner: _SlowStore):
        self.inner, self.owner = inner, owner

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n)
        self.owner.read_bytes += len(data)
        if self.owner.read_bytes >= self.owner.after:
            self.owner.reached.set()
            time.sleep(self.owner.pace)
        return data


class _SlowStore:
    def __init__(self, store: S3BackupStore, *, after: int = 3 * MiB, pace: float = 0.1):
        self.store, self.after, self.pace = store, after, pace
        self.read_bytes = 0  # of the plain payload, by every reader
        self.reached = threading.Event()

    @contextlib.contextmanager
    def open_payload(self, backup: Backup) -> Iterator[_SlowReader]:
        with self.store.open_payload(backup) as reader:
            yield _SlowReader(reader, self)


def _postgres_on(target: Path, *, anything: bool = False) -> list[int]:
    """PIDs of PostgreSQL processes working in `target` (every one chdirs into its data
    directory) or naming it on their command line; with `anything`, of any process (a
    restore's shell scripts name the target too: a watcher of theirs may outlive them by
    one poll, 0.1 s)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            comm = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if cwd == str(target) or cwd.startswith(f"{target}/") or (
                (anything or comm == "postgres")
                and (f"{target} " in f"{cmdline} " or f"{target}/" in cmdline)):
            found.append(int(proc.name))
    return found


def _flags() -> set[str]:
    return {p.name for p in Path("/tmp").glob(".failover-restore-*.cancel")}


def _cancel_when(ready: Callable[[], bool], fence: fencing.Fence, cancelled: threading.Event,
                 reason: str) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        cancelled.set()
        fence.cancel(reason)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _restore_cancelled(restorer: Any, backup: Backup, into: Target,
                       ready: Callable[[], bool]) -> fencing.Cancelled:
    """Run the restore as the executor would, cancel it once `ready()`; return the error."""
    fence = fencing.Fence(7, "controller-a")
    cancelled = threading.Event()
    canceller = _cancel_when(ready, fence, cancelled, "step restore-db timed out after 1.5 s")
    with fencing.scope(fence), pytest.raises(fencing.Cancelled) as err:
        restorer.restore(backup=backup, into=into)
    canceller.join(5)
    assert cancelled.is_set(), "the restore ended before it was cancelled"
    return err.value


def _ssh(sshd: SshServer, tmp: Path) -> dict[str, Any]:
    (tmp / "key").write_text(sshd.client_key.read_text())
    (tmp / "known").write_text(sshd.known_hosts)
    return {"ssh": {"user": sshd.user, "privateKey": {"fromFile": str(tmp / "key")},
                    "knownHosts": {"fromFile": str(tmp / "known")}}}


def _target(path: Path, over_ssh: bool, sshd: SshServer | None, validation: list[Any]
            ) -> Target:
    options = {"port": free_port(), "socketDir": str(path.parent / "sock"),
               "validation": validation, "actor": "alice", "overwrite": True}
    if over_ssh:
        assert sshd is not None
        return Target(host="127.0.0.1", path=str(path), options={**options,
                                                                 "sshPort": sshd.port})
    return Target(host=None, path=str(path), options=options)


def _left_as_it_was(old: OldCluster, before: dict[str, Any]) -> None:
    assert _postgres_on(old.path) == []
    assert old.fingerprint() == before and old.leftovers() == []
    assert old.read() == OLD_NOTE  # the old node starts and its data reads back


def _verified_backup(store: S3BackupStore, pg: PostgresServer) -> Backup:
    backup = take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                             host=str(pg.sock), port=pg.port)
    # the restore's own checks are under test, not verification: mark it as verified
    return dataclasses.replace(backup, verified=True)


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])
def test_a_cancel_mid_stream_stops_the_stream_and_leaves_nothing(
        over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
        source_pg: PostgresServer, sshd: SshServer, journal: Any, tmp_path: Path,
        places: Path, old_cluster: Callable[[Path], OldCluster]) -> None:
    backup = _verified_backup(s3_store, source_pg)
    assert (backup.meta["plainSize"] or 0) > 12 * MiB  # seconds of streaming at the crawl
    slow = _SlowStore(s3_store)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": store_options},
        **(_ssh(sshd, tmp_path) if over_ssh else {})}), secrets=Secrets(),
        audit=journal.audit, store=slow)  # type: ignore[arg-type]
    old = old_cluster(places / f"cancel-stream-{over_ssh}" / "data")
    before, flags = old.fingerprint(), _flags()
    err = _restore_cancelled(restorer, backup, _target(old.path, over_ssh, sshd, VALIDATION),
                             slow.reached.is_set)
    assert "timed out after 1.5 s" in str(err)
    assert slow.read_bytes < backup.meta["plainSize"]  # the stream stopped, not finished
    _left_as_it_was(old, before)
    assert _flags() == flags
    trail = [a["detail"] for a in journal.audit_trail() if a["action"] == "restore"]
    assert trail[-1].startswith(f"CANCELLED restoring {backup.id}")


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local", "ssh"])
def test_a_cancel_after_postgres_started_stops_it_and_leaves_nothing(
        over_ssh: bool, s3_store: S3BackupStore, store_options: dict[str, Any],
        source_pg: PostgresServer, sshd: SshServer, tmp_path: Path, places: Path,
        old_cluster: Callable[[Path], OldCluster]) -> None:
    backup = _verified_backup(s3_store, source_pg)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate({
        "store": {"kind": "s3", "options": store_options},
        **(_ssh(sshd, tmp_path) if over_ssh else {})}), secrets=Secrets(), store=s3_store)
    old = old_cluster(places / f"cancel-validate-{over_ssh}" / "data")
    target, before = old.path, old.fingerprint()
    into = _target(target, over_ssh, sshd, [*VALIDATION, SLOW_QUERY])

    def in_the_slow_query() -> bool:  # the restored server runs the last validation query
        if not (target / "postmaster.pid").exists():
            return False
        got = subprocess.run(as_user(
            ["/usr/lib/postgresql/15/bin/psql", "-X", "-A", "-t", "-h",
             str(target.parent / "sock"), "-p", str(into.options["port"]), "-U", "postgres",
             "-c", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                   "'SELECT 1 FROM pg_sleep%' AND pid <> pg_backend_pid()"]),
            capture_output=True, text=True, check=False)
        return got.stdout.strip() == "1"

    flags = _flags()
    err = _restore_cancelled(restorer, backup, into, in_the_slow_query)
    assert "stopped at validate" in str(err) and "was stopped" in str(err)
    _left_as_it_was(old, before)  # the server the restore started is stopped, undone
    assert _flags() == flags


def test_a_pgbackrest_restore_cancelled_mid_fetch_never_starts_postgres(
        s3_store: S3BackupStore, source_pg: PostgresServer, pgbackrest_conf: Path,
        stanza: str, places: Path, old_cluster: Callable[[Path], OldCluster]) -> None:
    backup = dataclasses.replace(register_pgbackrest(
        s3_store, dataset="orders", kind="continuous", actor="cron:hourly",
        config=str(pgbackrest_conf), stanza=stanza), verified=True)
    marks = places / "marks"
    marks.mkdir()
    marks.chmod(0o777)
    wrapper = places / "slow-pgbackrest"  # the real pgbackrest, after a long fetch's wait
    wrapper.write_text(f"""#!/bin/sh
echo $$ > {marks}/pid
trap 'kill "$s" 2>/dev/null; exit 143' TERM
sleep 120 & s=$!
wait "$s"
exec pgbackrest "$@"
""")
    wrapper.chmod(0o755)
    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(pgbackrest_conf), "stanza": stanza, "pgbackrest": str(wrapper)}),
        secrets=Secrets())
    old = old_cluster(places / "cancel-pgbr" / "data")
    before, flags = old.fingerprint(), _flags()
    err = _restore_cancelled(restorer, backup, _target(old.path, False, None, VALIDATION),
                             (marks / "pid").exists)
    assert "stopped at fetch" in str(err)
    fetch_pid = int((marks / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(fetch_pid, 0)  # the fetch was terminated, not left running
    _left_as_it_was(old, before)
    assert _flags() == flags


def test_a_fence_cancelled_before_the_restore_touches_nothing(
        s3_store: S3BackupStore, store_options: dict[str, Any], places: Path) -> None:
    backup = Backup(id="b1", dataset="orders", kind="daily", taken_at=0.0, location="x",
                    verified=True, meta={"format": "basebackup"})
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}}), secrets=Secrets(),
        store=s3_store)
    fence = fencing.Fence(3, "controller-a")
    fence.cancel("lease lost to controller-b")
    target = places / "never" / "data"
    with fencing.scope(fence), pytest.raises(fencing.Cancelled, match="lease lost"):
        restorer.restore(backup=backup, into=Target(host=None, path=str(target)))
    assert not target.exists()

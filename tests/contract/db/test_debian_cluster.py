"""`follow` on a cluster configured outside its data directory (Debian's
/etc/postgresql/15/NAME, started with `pg_ctlcluster`): the node's `startCommand`
starts it as a standby, where `pg_ctl start` on its data directory cannot (no
postgresql.conf there). A real Debian cluster (`pg_createcluster`, its socket and log
in the test's directory), rebuilt from the primary of a real pair by a base backup,
stopped by PID and dropped after the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import registry
from controller.db import Node
from controller.db.postgres import PostgresDatabase
from controller.drill.processes import stop_pid
from controller.drill.servers.postgres import PostgresServer, give_to
from controller.model import PermanentError
from controller.netutil import free_port
from controller.secrets import Secrets
from tests.contract.db.conftest import node

Pair = tuple[PostgresServer, PostgresServer]


@pytest.fixture
def debian() -> Iterator[Node]:
    """A Debian cluster of PostgreSQL 15 (config in /etc/postgresql/15/NAME), stopped."""
    base = Path(tempfile.mkdtemp(prefix="debian-pg-"))
    base.chmod(0o755)
    for sub in ("run", "log", "15"):  # 15: as /var/lib/postgresql/15, the owner's
        give_to(base / sub, mode=0o755)
    name, port = f"failover{os.getpid()}", free_port()
    data = base / "15" / name
    subprocess.run(["pg_createcluster", "-d", str(data), "-s", str(base / "run"),
                    "-l", str(base / "log" / "postgresql.log"), "-p", str(port), "15", name,
                    "--", "-A", "trust"], check=True, capture_output=True)
    try:
        yield Node.model_validate({"host": str(base / "run"), "port": port,
                                   "data": str(data),
                                   "startCommand": ["pg_ctlcluster", "15", name, "start"]})
    finally:
        pid = data / "postmaster.pid"
        if pid.exists():
            stop_pid(int(pid.read_text().split()[0]))
        subprocess.run(["pg_dropcluster", "15", name], check=True, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def rebuilt(db: PostgresDatabase, cluster: Node, source: Node) -> None:
    """The cluster's data replaced by a base backup of `source`, without the
    configuration files a Debian primary keeps in /etc (none in its data directory)."""
    db.basebackup(cluster, source=source, aside="aside")
    for conf in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        Path(cluster.data or "", conf).unlink()


def test_a_debian_cluster_follows_the_primary_through_its_start_command(
        pg_pair: Pair, debian: Node) -> None:
    primary, _ = pg_pair
    db = registry.build("database", "postgres", {}, secrets=Secrets())
    assert isinstance(db, PostgresDatabase)
    rebuilt(db, debian, node(primary))
    without = debian.model_copy(update={"start_command": None})
    with pytest.raises(PermanentError, match="pg_ctl start failed"):
        db.follow(without, source=node(primary))  # pg_ctl finds no postgresql.conf
    assert db.follow(debian, source=node(primary)) == {"already": False}
    primary.psql("INSERT INTO orders VALUES (1, 'after the rebuild')")
    state = db.state(debian)
    assert state.in_recovery
    for _ in range(400):
        if db.query(debian, "SELECT count(*) FROM orders") == "1":
            break
        time.sleep(0.05)
    assert db.query(debian, "SELECT count(*) FROM orders") == "1"
    assert db.state(debian).streaming
    assert db.follow(debian, source=node(primary)) == {"already": True}

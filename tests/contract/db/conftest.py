"""The database worlds the `Database` contract runs on: the in-memory pair
(`controller.testing_db`) and a real PostgreSQL 15 primary with a streaming standby
(`PostgresServer.standby`: `pg_basebackup -R`), fresh for each test (a promotion cannot
be undone), stopped by PID after it (`adopt`: the PID of a server a failback restarted).
The primary runs with `wal_log_hints = on`, which `pg_rewind` needs on a cluster without
data checksums, and keeps 128 MB of WAL (the WAL back to the last common checkpoint that
a rewind reads); the standby inherits both with the base backup. `sshd` is a real
OpenSSH server on loopback for the `ssh-stop` fence (it logs in as this user, root here,
and stops the postmaster by PID). A missing binary fails the fixture loudly; nothing is
skipped.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller import registry
from controller.db import Database, Node
from controller.drill.processes import stop_pid
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.secrets import Secrets
from controller.testing_db import FakeDatabase

KINDS = ("memory", "postgres")


@dataclass
class DbWorld:
    kind: str
    db: Database
    primary: Node
    standby: Node
    servers: tuple[PostgresServer, PostgresServer] | None = None

    def commit(self, index: int, row: int) -> None:
        """A client commits row `row` on node `index` (0: the first primary, 1: its
        standby)."""
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            assert self.db.commit((self.primary, self.standby)[index].host) is not None
        else:
            self.servers[index].psql(f"INSERT INTO orders VALUES ({row}, 'row {row}')")

    def rows(self, index: int) -> int:
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            return len(self.db.nodes()[(self.primary, self.standby)[index].host]["rows"])
        return int(self.servers[index].psql("SELECT count(*) FROM orders"))

    def break_rewind(self) -> None:
        """The old primary cannot be rewound: it ran without wal_log_hints."""
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            self.db.set_node(self.primary.host, rewindable=False)
        else:
            old = self.servers[0]
            old.psql("ALTER SYSTEM SET wal_log_hints = off")
            old.stop()
            old.start()
            old.wait_streaming()

    def adopt(self) -> None:
        if self.servers is not None:
            adopt(*self.servers)

    def crash_primary(self) -> None:
        """The old primary crashes (an immediate shutdown: no shutdown checkpoint)."""
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            self.db.set_node(self.primary.host, running=False)
        else:
            old = self.servers[0]
            pid, old.pid = old.pid, None
            assert pid is not None
            stop_pid(pid, signal.SIGQUIT)

    def cut_primary(self) -> None:
        """The old primary stops answering (its host is gone)."""
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            self.db.set_node(self.primary.host, reachable=False)
        else:
            self.servers[0].stop()


def adopt(*servers: PostgresServer) -> None:
    """Take over the PID of each server as it runs now (a failback stopped and started
    it), so the fixture stops the right process."""
    for server in servers:
        pid_file = server.data / "postmaster.pid"
        server.pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None


@pytest.fixture
def pg_pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    base = Path(tempfile.mkdtemp(prefix="promote-pg-"))
    base.chmod(0o755)
    primary = PostgresServer(base / "primary", settings={
        "wal_log_hints": "on", "wal_keep_size": "'128MB'"}).init().start()
    standby: PostgresServer | None = None
    try:
        primary.psql("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        standby = primary.standby(base / "standby")
        primary.wait_streaming()
        yield primary, standby
    finally:
        adopt(primary, *([] if standby is None else [standby]))
        if standby is not None:
            standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    base = Path(tempfile.mkdtemp(prefix="promote-sshd-"))
    server = SshServer(base).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def ssh_options(sshd: SshServer, tmp: Path) -> dict[str, Any]:
    """The database backend's `ssh:` options for `sshd` (key and pinned host key in files)."""
    (tmp / "key").write_text(sshd.client_key.read_text())
    (tmp / "key").chmod(0o600)
    (tmp / "known_hosts").write_text(sshd.known_hosts)
    return {"user": sshd.user, "privateKey": {"fromFile": str(tmp / "key")},
            "knownHosts": {"fromFile": str(tmp / "known_hosts")}}


def node(server: PostgresServer, **extra: Any) -> Node:
    return Node.model_validate({"host": str(server.sock), "port": server.port,
                                "data": str(server.data), **extra})


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest) -> DbWorld:
    kind: str = request.param
    if kind == "memory":
        db = registry.build("database", "memory", {"key": "contract"}, secrets=Secrets())
        return DbWorld(kind, db, Node(host="dc-a"), Node(host="dc-b"))
    primary, standby = request.getfixturevalue("pg_pair")
    db = registry.build("database", "postgres", {}, secrets=Secrets())
    return DbWorld(kind, db, node(primary), node(standby), (primary, standby))

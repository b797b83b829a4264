"""The database worlds the `Database` contract runs on: the in-memory pair
(`controller.testing_db`) and a real PostgreSQL 15 primary with a streaming standby
(`PostgresServer.standby`: `pg_basebackup -R`), fresh for each test (a promotion cannot
be undone), stopped by PID after it. `sshd` is a real OpenSSH server on loopback for the
`ssh-stop` fence (it logs in as this user, root here, and stops the postmaster by PID).
A missing binary fails the fixture loudly; nothing is skipped.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller import registry
from controller.db import Database, Node
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

    def cut_primary(self) -> None:
        """The old primary stops answering (its host is gone)."""
        if self.servers is None:
            assert isinstance(self.db, FakeDatabase)
            self.db.set_node(self.primary.host, reachable=False)
        else:
            self.servers[0].stop()


@pytest.fixture
def pg_pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    base = Path(tempfile.mkdtemp(prefix="promote-pg-"))
    base.chmod(0o755)
    primary = PostgresServer(base / "primary").init().start()
    standby: PostgresServer | None = None
    try:
        primary.psql("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        standby = primary.standby(base / "standby")
        primary.wait_streaming()
        yield primary, standby
    finally:
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

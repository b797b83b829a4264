"""The sandbox's databases: dc-a's primary PostgreSQL and, on request, dc-b's standby.

Owns the PostgreSQL side of the two-site world, so the sandbox only wires it in:

- **dc-a's primary** (`servers.postgres`) with the `orders` data set;
- with `standby`, **dc-b's streaming standby** of it (`pg_basebackup -R`, application
  name `dc-b`), ready once it streams and has replayed everything (`REWINDABLE` on
  both, so a failback can `pg_rewind` the crashed dc-a instead of copying it whole);
  **dc-a's database host** reached over SSH (its own sshd, accepting the same client key
  as dc-b's host, its host key pinned beside dc-b's), so a `promote` step fences dc-a
  there (`ssh-stop`); and a **STONITH hook** for that host (`stonith`, argv: a script
  stopping the postmaster named in dc-a's postmaster.pid, `--dry-run` only checks), the
  plan's fence when SSH cannot reach dc-a;
- **whatever postmaster runs in one of the sandbox's data directories**, whoever started
  it (the sandbox, a failback rebuilding dc-a as dc-b's standby, a restore onto dc-b):
  the teardown stops each by the PID in its postmaster.pid (`stop()`).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

from controller.drill import processes
from controller.drill.servers.postgres import PostgresServer, pg_tool
from controller.drill.servers.sshd import SshServer

STANDBY_NAME = "dc-b"
# what lets a failback `pg_rewind` a crashed primary onto its promoted standby's timeline
# rather than copy it whole: hint bits WAL-logged, and the WAL since the last checkpoint
# kept (pg_rewind's own crash recovery of the target checkpoints, and would recycle it)
REWINDABLE = {"wal_log_hints": "on", "wal_keep_size": "'256MB'"}
# the plan's variables only a sandbox with a standby offers
STANDBY_VARIABLES = ("db.primary.sshPort", "db.stonith", "db.standby.host",
                     "db.standby.port", "db.standby.data")
_STONITH = """#!/bin/sh
# STONITH hook of the sandbox's dc-a database host: stop its postmaster (fast shutdown),
# by the PID in postmaster.pid; with --dry-run only check that it could.
data={data}
if [ "${{1:-}}" = --dry-run ]; then test -d "$data" && echo "would stop $data"; exit $?; fi
pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || {{ echo "$data: stopped"; exit 0; }}
kill -INT "$pid" 2>/dev/null || {{ echo "$data: stopped"; exit 0; }}
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
echo "$data: postmaster $pid stopped"
"""


class Databases:
    """`start()`, then `primary` (dc-a) and, with `standby`, `standby` (dc-b)."""

    def __init__(self, base: Path, *, rows: int, standby: bool):
        self.base, self.rows, self.with_standby = base, rows, standby
        self.primary: PostgresServer | None = None
        self.standby: PostgresServer | None = None
        self.host: SshServer | None = None  # dc-a's database host, for the fence

    @property
    def stonith(self) -> list[str]:
        return [str(self.base / "dc-a-host" / "stonith")]

    def start(self) -> None:
        self.primary = PostgresServer(self.base / "dc-a-db",
                                      settings=REWINDABLE if self.with_standby else None)
        self.primary.init().start()
        self.primary.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL, "
                          "placed_at timestamptz NOT NULL DEFAULT now()); "
                          "INSERT INTO orders (id, amount) SELECT g, g % 97 + 1 "
                          f"FROM generate_series(1, {self.rows}) g")
        if self.with_standby:
            (self.base / "dc-a-host").mkdir(exist_ok=True)
            self.standby = self.primary.standby(self.base / "dc-b-db", name=STANDBY_NAME)
            self.primary.wait_streaming(STANDBY_NAME)
            script = Path(self.stonith[0])
            script.write_text(_STONITH.format(data=self.primary.data))
            script.chmod(0o700)

    def start_host(self, client_key: Path) -> str:
        """Start dc-a's database host sshd accepting `client_key` (dc-b host's key pair);
        returns its known_hosts line."""
        folder = self.base / "dc-a-host" / "ssh"
        folder.mkdir(parents=True, exist_ok=True)
        for key in (client_key, client_key.with_suffix(".pub")):
            shutil.copy2(key, folder / key.name)
        self.host = SshServer(folder)
        self.host.start()
        return self.host.known_hosts

    def promoted(self) -> bool:
        """dc-b's standby left recovery: dc-a must not be started as a primary again."""
        return self.standby is not None and self.standby.psql(
            "SELECT pg_is_in_recovery()") == "f"

    def variables(self) -> dict[str, Any]:
        """The plan's view of the databases (`db.*`)."""
        db = self.primary
        assert db is not None
        out: dict[str, Any] = {"db.primary.host": str(db.sock), "db.primary.port": db.port,
                               "db.primary.data": str(db.data), "db.pgBin": str(
                                   Path(pg_tool("pg_ctl")).parent), "db.rows": str(self.rows)}
        if self.standby is not None and self.host is not None:
            s = self.standby
            out |= dict(zip(STANDBY_VARIABLES, (self.host.port, self.stonith, str(s.sock),
                                                s.port, str(s.data)), strict=True))
        return out

    def services(self) -> list[tuple[str, str, int | None, list[int], str]]:
        """(site, service, pid, tcp ports, detail) of each database server running now
        (its postmaster, whoever started it last: a failback restarts both)."""
        rows: list[tuple[str, str, int | None, list[int], str]] = []
        running = {data: pid for data, pid, _ in self._running()}
        db, s, host = self.primary, self.standby, self.host
        if db is not None and db.data in running:
            rows.append(("dc-a", "postgresql (primary)", running[db.data], [db.port],
                         f"127.0.0.1:{db.port} data {db.data}, table orders"))
        if s is not None and s.data in running:
            rows.append(("dc-b", "postgresql (standby)", running[s.data], [s.port],
                         f"127.0.0.1:{s.port} data {s.data}, streams from dc-a as "
                         f"{STANDBY_NAME}"))
        if host is not None and host.proc is not None:
            rows.append(("dc-a", "sshd (database host)", host.proc.pid, [host.port],
                         f"127.0.0.1:{host.port} host key pinned; fences dc-a's database"))
        return rows

    def ports(self) -> set[int]:
        """Every port a database of the sandbox listens on, up or down now."""
        return {s.port for s in (self.primary, self.standby) if s is not None}

    def _running(self, *extra: Path) -> list[tuple[Path, int, int]]:
        """(data directory, pid, start time) of each postmaster running in one of the
        sandbox's data directories (and `extra`), while that process still names it."""
        found = []
        for data in [*(s.data for s in (self.primary, self.standby) if s is not None),
                     *extra]:
            pid = processes.postmaster(data)
            when = processes.started(pid) if pid is not None else None
            if pid is not None and when is not None and str(data) in processes.command(pid):
                found.append((data, pid, when))
        return found

    def stop(self, *extra: Path) -> list[int]:
        """Stop every postmaster running in one of the sandbox's data directories (and
        `extra`), whoever started it, by PID (fast shutdown), and dc-a's host sshd;
        returns the postmasters' PIDs."""
        found = self._running(*extra)
        for _, pid, when in found:
            processes.stop_same(pid, when, signal.SIGINT)
        for server in (self.primary, self.standby):
            if server is not None:
                server.pid = None  # stopped above by its postmaster.pid, or down already
        if self.host is not None:
            self.host.stop()
        return [pid for _, pid, _ in found]

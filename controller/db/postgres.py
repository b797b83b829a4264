"""PostgreSQL primary and streaming standby (`kind: postgres`, role `database`).

Owns how the promote and db-failback steps reach real servers: SQL through `psql` on the
controller's host, started as the PostgreSQL probe starts it (`psql_command`: every
authentication method and TLS mode, the password only in psql's environment), and what
needs the node's data directory (the `ssh-stop` fence, `stop`, `rewind`, `basebackup`,
`follow`: `controller.db.pghost`) over SSH with the host key pinned
(`controller.backups.hosts.SshHost`; `LocalHost` for a node without `ssh`).

- **state**: one query: `pg_is_in_recovery()`, the timeline (a standby's: the newest of
  its WAL receiver's, the newest history file in its pg_wal (the timeline it follows)
  and its last restartpoint's, since a standby not streaming has no receiver and a
  rewound one restarts at a checkpoint before the fork; a primary's: the current WAL
  file's, as `pg_control_checkpoint()` lags a promotion; `pg_ls_waldir` needs a
  superuser or `pg_monitor`), the LSN
  (`pg_last_wal_replay_lsn()` / `pg_current_wal_lsn()`), `pg_stat_wal_receiver.status`,
  the replay lag (0 when everything received is replayed, else the age of
  `pg_last_xact_replay_timestamp()`), `default_transaction_read_only`. A node whose
  connection fails (psql exit 2) is `Unreachable`.
- **fence ssh-stop**: the PID in the data directory's `postmaster.pid` gets SIGINT (fast
  shutdown: the walsenders send what they have first) and the step waits, fenced, for it
  to exit; then `pg_controldata` gives the shutdown checkpoint's LSN, the primary's last.
  A data directory without `postmaster.pid` is stopped already.
- **fence sql**: `ALTER SYSTEM SET default_transaction_read_only = on`, reload, end every
  other client session, then `pg_switch_wal()`, which writes out all WAL (a commit made
  with `synchronous_commit = off` may still sit in the WAL buffers, past the write
  position); the last LSN is read afterwards. Weaker than a stop (a client
  may still ask for a read-write transaction): prefer `ssh-stop` or a STONITH command.
- **fence command**: the plan's argv on this host; its output is recorded.
- **promote**: one psql session: `pg_promote(wait => false)`, a wait that asks
  `pg_is_in_recovery()` every 10 ms (`pg_promote`'s own wait, and `pg_ctl promote -w`'s,
  look every 100 ms, which is most of what a promotion costs), the node's state, then
  the caller's queries read-only: one process instead of one a call. PostgreSQL's
  "recovery is not in progress" is `NotInRecovery` (nothing changed).
- A **state** read of a node whose address refuses a connection (no socket file, or
  nothing listening) is `Unreachable` without starting psql (the usual reading of a
  crashed primary); any other connection fault is left to psql to describe.
- **rewind**: the source is checkpointed first (a promoted node names its new timeline
  in its control file only after one, and pg_rewind reads it there), then `pg_rewind`.
- **size**: one query of a primary: `pg_current_wal_lsn()`, `pg_stat_wal.wal_bytes` (WAL
  generated since the statistics began: a segment switch's padding is not in it) and
  the sum of `pg_database_size` (readable with `pg_monitor`, as `state` needs).
- **rewind size**: the source checkpointed as for a rewind, then `pg_rewind --dry-run`.
- **follow** of a node that answers in recovery changes nothing.
- **create slot**: `pg_create_physical_replication_slot(name, true)`: it keeps WAL from
  the last checkpoint's redo on (a promotion's fork included); **drop slot** works on a
  standby too (a rebuilt node keeps the slots its old data held: pg_rewind leaves
  pg_replslot alone).
- **unfence**: `default_transaction_read_only = off` and a reload (sql), or a start
  (ssh-stop).
"""

from __future__ import annotations

import math
import os
import secrets as tokens
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups.hosts import Host, LocalHost, SshHost, SshOptions
from controller.db import (
    Database,
    FenceMethod,
    Node,
    NodeSize,
    NodeState,
    NotInRecovery,
    Promoted,
    RewindSize,
    Slot,
    Unreachable,
    lsn_text,
)
from controller.db.pghost import ServerHost, conninfo
from controller.model import Evidence, PermanentError
from controller.probes.postgres import NO_PSQL, find_psql, psql_command
from controller.schema import Duration
from controller.secrets import SecretRef, Secrets, redact

SEP = "|"  # psql_command's column separator
STATE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN GREATEST((SELECT received_tli FROM "
    "pg_stat_wal_receiver), (SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM "
    "pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}[.]history$'), "
    "(SELECT timeline_id FROM pg_control_checkpoint())) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_lsn() END - '0/0')::bigint, "
    "COALESCE((SELECT status FROM pg_stat_wal_receiver), 'none'), "
    "CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END, "
    "current_setting('default_transaction_read_only')")
SIZE_SQL = ("SELECT (pg_current_wal_lsn() - '0/0')::bigint, (SELECT wal_bytes FROM "
            "pg_stat_wal)::bigint, (SELECT sum(pg_database_size(oid)) FROM pg_database)"
            "::bigint")
PROMOTE_POLL = 0.01  # seconds between pg_is_in_recovery() readings while promoting
WAIT_SQL = ("DO $$BEGIN FOR i IN 1..{polls} LOOP EXIT WHEN NOT pg_is_in_recovery(); "
            f"PERFORM pg_sleep({PROMOTE_POLL}); END LOOP; END$$")
SLOTS_SQL = (
    "SELECT slot_name, active, COALESCE((CASE WHEN pg_is_in_recovery() THEN "
    "pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END - restart_lsn)::bigint, 0) "
    "FROM pg_replication_slots ORDER BY slot_name")


class PostgresDatabaseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    user: str = "postgres"
    password: SecretRef | None = None
    database: str = "postgres"
    sslmode: str | None = None
    psql: str | None = Field(None, description="path to psql; default: found on PATH")
    pg_bin: str = Field("/usr/lib/postgresql/15/bin", alias="pgBin",
                        description="on a node's host: where pg_controldata, pg_rewind, "
                        "pg_basebackup and pg_ctl are")
    os_user: str = Field("postgres", alias="osUser", description="the OS user owning a "
                         "node's data directory: server commands run as it (runuser, when "
                         "the connection is root)")
    ssh: SshOptions | None = Field(None, description="how to reach nodes that name `ssh`")
    connect_timeout: Duration = Field(5.0, alias="connectTimeout")
    stop_timeout: Duration = Field(60.0, alias="stopTimeout", description="ssh-stop: how "
                                   "long the postmaster may take to exit")
    start_timeout: Duration = Field(60.0, alias="startTimeout", description="how long a "
                                    "node started by a failback (or an ssh-stop fence "
                                    "undone) may take to accept connections; a rewound "
                                    "node that does not is rebuilt from a base backup")


class PostgresDatabase(Database):
    Options = PostgresDatabaseOptions

    def __init__(self, options: PostgresDatabaseOptions, *, secrets: Secrets | None = None):
        self.options = options
        self.secrets = secrets or Secrets()
        self._password = (self.secrets.reveal(options.password).strip()
                          if options.password is not None else None)

    # --- SQL ---------------------------------------------------------------------------------

    def _psql(self, node: Node, *statements: str, timeout: float = 60.0) -> list[list[str]]:
        """Run each statement in one session; the rows they print, split in columns."""
        return _rows(self._run(node, list(statements), timeout))

    def _sections(self, node: Node, statements: list[str],
                  timeout: float) -> list[list[list[str]]]:
        """Run each statement in one session; the rows each printed, statement by
        statement (a marker line is echoed before each)."""
        mark = f"--failover-{tokens.token_hex(8)}--"
        argv: list[str] = []
        for sql in statements:
            argv += [f"\\echo {mark}", sql]
        out = self._run(node, argv, timeout).split(mark + "\n")[1:]
        return [_rows(part) for part in out]

    def _run(self, node: Node, statements: list[str], timeout: float) -> str:
        """psql with each statement as a `-c`, in one session; what it printed."""
        o = self.options
        try:
            argv, env = psql_command(o.psql, host=node.host, port=node.port, user=o.user,
                                     database=o.database, password=self._password,
                                     sslmode=o.sslmode, connect_timeout=o.connect_timeout,
                                     app="failover-promote")
        except FileNotFoundError as exc:
            raise PermanentError(str(exc)) from None
        for sql in statements:
            argv += ["-c", sql]
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{node.describe()}: no answer within {timeout:g} s") from None
        err = redact(proc.stderr.strip()[-500:])
        if proc.returncode == 2:  # the connection failed or was lost
            raise Unreachable(f"{node.describe()} does not answer: {err}")
        if proc.returncode != 0:
            raise PermanentError(f"{node.describe()}: psql exited {proc.returncode}: {err}")
        return proc.stdout

    def state(self, node: Node) -> NodeState:
        refused = _refused(node, self.options.connect_timeout)
        if refused is not None:
            raise Unreachable(f"{node.describe()} does not answer: {refused}")
        return _state(self._psql(node, STATE_SQL)[0])

    def query(self, node: Node, sql: str) -> str:
        rows = self._psql(node, "SET default_transaction_read_only = on", sql)
        return SEP.join(rows[0]) if rows else ""

    def slots(self, node: Node) -> list[Slot]:
        return [Slot(r[0], r[1] == "t", int(r[2])) for r in self._psql(node, SLOTS_SQL)]

    # --- the fence, and a node's server --------------------------------------------------

    def _host(self, node: Node) -> Host:
        if node.ssh is None:
            return LocalHost()
        if self.options.ssh is None:
            raise PermanentError(f"node {node.describe()} names ssh host {node.ssh!r}, but "
                                 "the database backend has no options.ssh (user, privateKey, "
                                 "knownHosts)")
        return SshHost(node.ssh, self.options.ssh, secrets=self.secrets, port=node.ssh_port)

    @contextmanager
    def _server(self, node: Node) -> Iterator[ServerHost]:
        o = self.options
        server = ServerHost(node, self._host(node), pg_bin=o.pg_bin, os_user=o.os_user,
                            stop_timeout=o.stop_timeout, start_timeout=o.start_timeout)
        try:
            yield server
        finally:
            server.close()

    def fence(self, node: Node, *, method: FenceMethod,
              command: list[str] | None = None) -> Evidence:
        if method is FenceMethod.SQL:
            return self._fence_sql(node)
        if method is FenceMethod.COMMAND:
            if not command:
                raise PermanentError("a command fence needs the command (fence.command)")
            fencing.check()
            done = LocalHost().run(command, timeout=self.options.stop_timeout)
            return {"method": method.value, "already": False,
                    "output": redact((done.out + done.err).strip()[-300:])}
        return {"method": "ssh-stop", **self.stop(node)}

    def _fence_sql(self, node: Node) -> Evidence:
        before = self.state(node)
        if before.read_only:
            return {"method": "sql", "already": True, "lastLsn": lsn_text(before.lsn)}
        fencing.check()
        self._psql(node, "ALTER SYSTEM SET default_transaction_read_only = on",
                   "SELECT pg_reload_conf()",
                   "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                   "backend_type = 'client backend' AND pid <> pg_backend_pid()",
                   "SELECT pg_switch_wal()")
        return {"method": "sql", "already": False, "lastLsn": lsn_text(self.state(node).lsn)}

    def stop(self, node: Node) -> Evidence:
        with self._server(node) as server:
            return server.stop()

    def unfence(self, node: Node, *, method: FenceMethod) -> Evidence:
        if method is FenceMethod.SSH_STOP:
            with self._server(node) as server:
                return server.start()
        if method is not FenceMethod.SQL:
            raise PermanentError(f"a {method.value} fence is undone by a person, not here")
        if not self.state(node).read_only:
            return {"already": True}
        fencing.check()
        self._psql(node, "ALTER SYSTEM SET default_transaction_read_only = off",
                   "SELECT pg_reload_conf()")
        return {"already": False}

    def _source(self, source: Node) -> str:
        return conninfo(source, self.options.user, self.options.database)

    def size(self, node: Node) -> NodeSize:
        row = self._psql(node, SIZE_SQL)[0]
        return NodeSize(lsn=int(row[0]), wal_bytes=int(row[1]), databases_bytes=int(row[2]))

    def rewind_size(self, node: Node, *, source: Node) -> RewindSize:
        self._checkpoint(source)
        with self._server(node) as server:
            return server.rewind_size(self._source(source))

    def rewind(self, node: Node, *, source: Node) -> Evidence:
        self._checkpoint(source)
        with self._server(node) as server:
            return server.rewind(self._source(source))

    def _checkpoint(self, source: Node) -> None:
        # a promoted source names its new timeline in its control file only after a
        # checkpoint: without one pg_rewind sees one timeline and rewinds nothing
        fencing.check()
        self._psql(source, "CHECKPOINT")

    def create_slot(self, node: Node, name: str) -> Evidence:
        fencing.check()
        made = self._psql(node, "SELECT count(pg_create_physical_replication_slot("
                          f"{_literal(name)}, true)) FROM (SELECT WHERE NOT EXISTS (SELECT "
                          f"FROM pg_replication_slots WHERE slot_name = {_literal(name)})) s")
        return {"slot": name, "already": made[0][0] == "0"}

    def drop_slot(self, node: Node, name: str) -> Evidence:
        fencing.check()
        dropped = self._psql(node, f"SELECT count(pg_drop_replication_slot(slot_name)) FROM "
                             f"pg_replication_slots WHERE slot_name = {_literal(name)}")
        return {"slot": name, "already": dropped[0][0] == "0"}

    def basebackup(self, node: Node, *, source: Node, aside: str) -> Evidence:
        with self._server(node) as server:
            return server.basebackup(self._source(source), aside)

    def follow(self, node: Node, *, source: Node, slot: str | None = None) -> Evidence:
        try:
            if self.state(node).in_recovery:
                return {"already": True}
        except Unreachable:
            pass  # stopped: started below
        with self._server(node) as server:
            return server.follow(self._source(source), slot)

    def check_fence(self, node: Node, *, method: FenceMethod,
                    command: list[str] | None = None, dry_run: bool = False) -> str:
        if method is FenceMethod.SQL:
            self._psql(node, "SELECT 1")
            return f"{node.describe()} answers SQL"
        if method is FenceMethod.COMMAND:
            if not command:
                raise PermanentError("a command fence needs the command (fence.command)")
            if dry_run:
                LocalHost().run([*command, "--dry-run"], timeout=60)
                return f"{command[0]} --dry-run exited 0"
            if not os.access(command[0], os.X_OK):
                raise PermanentError(f"fence command {command[0]} is not an executable file")
            return f"{command[0]} is executable"
        with self._server(node) as server:
            pid = server.pid()
        if pid is None:
            raise RuntimeError(f"no postmaster.pid in {node.data} on {server.host.name}: is "
                               "PostgreSQL running there?")
        return f"{server.host.name} answers over SSH; postmaster {pid} running"

    def promote(self, node: Node, *, timeout: float,
                queries: Sequence[str] = ()) -> Promoted:
        polls = max(1, math.ceil(timeout / PROMOTE_POLL))
        statements = ["SELECT pg_promote(false)", WAIT_SQL.format(polls=polls), STATE_SQL]
        if queries:
            statements += ["SET default_transaction_read_only = on", *queries]
        fencing.check()
        try:
            said = self._sections(node, statements, timeout=timeout + 60)
        except PermanentError as exc:
            if "recovery is not in progress" in str(exc):
                raise NotInRecovery(f"{node.describe()} is not in recovery: there is "
                                    "nothing to promote") from None
            raise
        return Promoted(_state(said[2][0]),
                        [SEP.join(rows[0]) if rows else "" for rows in said[4:]])

    def ready(self) -> str | None:
        if (self.options.psql or find_psql()) is None:
            raise PermanentError(NO_PSQL)
        return None



def _literal(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _rows(out: str) -> list[list[str]]:
    return [line.split(SEP) for line in out.splitlines() if line]


def _state(row: list[str]) -> NodeState:
    """A row of STATE_SQL."""
    return NodeState(in_recovery=row[0] == "t", timeline=int(row[1]), lsn=int(row[2]),
                     streaming=row[3] == "streaming", lag_seconds=float(row[4]),
                     read_only=row[5] == "on")


def _refused(node: Node, timeout: float) -> str | None:
    """Why `node`'s address takes no connection now (refused, no socket file, no answer
    within `timeout`); None when it accepts one or fails otherwise (psql then says how).
    The connection is closed before a startup packet: the server forks a backend that
    exits, and logs nothing of it (unless log_connections is on)."""
    if "," in node.host:
        return None  # a libpq host list: psql tries each
    try:
        if node.host.startswith("/"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(f"{node.host}/.s.PGSQL.{node.port}")
        else:  # every address the name has, as libpq tries them
            socket.create_connection((node.host, node.port), timeout).close()
    except TimeoutError:  # psql would wait as long, again, then fail alike
        return f"no connection within {timeout:g} s"
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        return exc.strerror or type(exc).__name__
    except OSError:
        pass  # a name that does not resolve, a route...: psql says which
    return None

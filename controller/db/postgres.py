"""PostgreSQL primary and streaming standby (`kind: postgres`, role `database`).

Owns how the promote step reaches real servers: SQL through `psql` on the controller's
host (as the PostgreSQL probe does: every authentication method and TLS mode, the
password only in psql's environment), and the `ssh-stop` fence over SSH with the host key
pinned (`controller.backups.hosts.SshHost`; `LocalHost` for a node without `ssh`).

- **state**: one query: `pg_is_in_recovery()`, the timeline (the WAL receiver's, or the
  current WAL file's on a primary: `pg_control_checkpoint()` lags a promotion), the LSN
  (`pg_last_wal_replay_lsn()` / `pg_current_wal_lsn()`), `pg_stat_wal_receiver.status`,
  the replay lag (0 when everything received is replayed, else the age of
  `pg_last_xact_replay_timestamp()`), `default_transaction_read_only`. A node whose
  connection fails (psql exit 2) is `Unreachable`.
- **fence ssh-stop**: the PID in the data directory's `postmaster.pid` gets SIGINT (fast
  shutdown: the walsenders send what they have first) and the step waits, fenced, for it
  to exit; then `pg_controldata` gives the shutdown checkpoint's LSN, the primary's last.
  A data directory without `postmaster.pid` is stopped already.
- **fence sql**: `ALTER SYSTEM SET default_transaction_read_only = on`, reload, end every
  other client session; the last LSN is read afterwards. Weaker than a stop (a client
  may still ask for a read-write transaction): prefer `ssh-stop` or a STONITH command.
- **fence command**: the plan's argv on this host; its output is recorded.
- **promote**: `pg_promote(wait => true, wait_seconds => N)`, refused on a node not in
  recovery.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups.hosts import CommandError, Host, LocalHost, SshHost, SshOptions
from controller.db import Database, FenceMethod, Node, NodeState, Slot, Unreachable, lsn_text
from controller.model import Evidence, PermanentError
from controller.plan import Duration
from controller.probes.postgres import find_psql
from controller.secrets import SecretRef, Secrets, redact

SEP = "|"
STATE_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_is_in_recovery() THEN COALESCE((SELECT received_tli FROM "
    "pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint())) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, "
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_lsn() END - '0/0')::bigint, "
    "COALESCE((SELECT status FROM pg_stat_wal_receiver), 'none'), "
    "CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END, "
    "current_setting('default_transaction_read_only')")
SLOTS_SQL = (
    "SELECT slot_name, active, COALESCE((CASE WHEN pg_is_in_recovery() THEN "
    "pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END - restart_lsn)::bigint, 0) "
    "FROM pg_replication_slots ORDER BY slot_name")
STOP_POLL = 0.1


class PostgresDatabaseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    user: str = "postgres"
    password: SecretRef | None = None
    database: str = "postgres"
    sslmode: str | None = None
    psql: str | None = Field(None, description="path to psql; default: found on PATH")
    pg_bin: str = Field("/usr/lib/postgresql/15/bin", alias="pgBin",
                        description="on the fenced host: where pg_controldata is")
    ssh: SshOptions | None = Field(None, description="how to reach nodes that name `ssh`")
    connect_timeout: Duration = Field(5.0, alias="connectTimeout")
    stop_timeout: Duration = Field(60.0, alias="stopTimeout", description="ssh-stop: how "
                                   "long the postmaster may take to exit")


class PostgresDatabase(Database):
    Options = PostgresDatabaseOptions

    def __init__(self, options: PostgresDatabaseOptions, *, secrets: Secrets | None = None):
        self.options = options
        self.secrets = secrets or Secrets()
        self._password = (self.secrets.reveal(options.password).strip()
                          if options.password is not None else None)

    # --- SQL ---------------------------------------------------------------------------------

    def _psql(self, node: Node, *statements: str, timeout: float = 60.0) -> list[list[str]]:
        """Run each statement in one session; the rows of the last, split in columns."""
        o = self.options
        psql = o.psql or find_psql()
        if psql is None:
            raise PermanentError("psql not found; install the PostgreSQL client "
                                 "(apt-get install -y --no-install-recommends postgresql-client)")
        argv = [psql, "-X", "-q", "-A", "-t", "-F", SEP, "-v", "ON_ERROR_STOP=1", "-h",
                node.host, "-p", str(node.port), "-U", o.user, "-d", o.database]
        for sql in statements:
            argv += ["-c", sql]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGCONNECT_TIMEOUT=str(max(2, math.ceil(o.connect_timeout))),
                   PGAPPNAME="failover-promote")
        if self._password is not None:
            env["PGPASSWORD"] = self._password
        if o.sslmode:
            env["PGSSLMODE"] = o.sslmode
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
        return [line.split(SEP) for line in proc.stdout.splitlines() if line]

    def state(self, node: Node) -> NodeState:
        row = self._psql(node, STATE_SQL)[0]
        return NodeState(in_recovery=row[0] == "t", timeline=int(row[1]), lsn=int(row[2]),
                         streaming=row[3] == "streaming", lag_seconds=float(row[4]),
                         read_only=row[5] == "on")

    def query(self, node: Node, sql: str) -> str:
        rows = self._psql(node, "SET default_transaction_read_only = on", sql)
        return SEP.join(rows[0]) if rows else ""

    def slots(self, node: Node) -> list[Slot]:
        return [Slot(r[0], r[1] == "t", int(r[2])) for r in self._psql(node, SLOTS_SQL)]

    # --- the fence ---------------------------------------------------------------------------

    def _host(self, node: Node) -> Host:
        if node.ssh is None:
            return LocalHost()
        if self.options.ssh is None:
            raise PermanentError(f"node {node.describe()} names ssh host {node.ssh!r}, but "
                                 "the database backend has no options.ssh (user, privateKey, "
                                 "knownHosts)")
        return SshHost(node.ssh, self.options.ssh, secrets=self.secrets, port=node.ssh_port)

    def _data(self, node: Node) -> str:
        if not node.data:
            raise PermanentError(f"node {node.describe()}: an ssh-stop fence needs its data "
                                 "directory (data: /var/lib/postgresql/15/main)")
        return node.data

    def _pid(self, host: Host, data: str) -> int | None:
        try:
            found = host.run(["head", "-n", "1", f"{data}/postmaster.pid"], timeout=30,
                             check=False)
        except ConnectionError as exc:
            raise Unreachable(str(exc)) from None
        return int(found.out.strip()) if found.rc == 0 and found.out.strip() else None

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
        return self._fence_stop(node)

    def _fence_sql(self, node: Node) -> Evidence:
        before = self.state(node)
        if before.read_only:
            return {"method": "sql", "already": True, "lastLsn": lsn_text(before.lsn)}
        fencing.check()
        self._psql(node, "ALTER SYSTEM SET default_transaction_read_only = on",
                   "SELECT pg_reload_conf()",
                   "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                   "backend_type = 'client backend' AND pid <> pg_backend_pid()")
        return {"method": "sql", "already": False, "lastLsn": lsn_text(self.state(node).lsn)}

    def _fence_stop(self, node: Node) -> Evidence:
        data = self._data(node)
        host = self._host(node)
        try:
            pid = self._pid(host, data)
            already = pid is None
            if pid is not None:
                fencing.check()
                host.run(["kill", "-s", signal.SIGINT.name, str(pid)], timeout=30,
                         check=False)
                waited = 0.0
                while host.run(["kill", "-0", str(pid)], timeout=30, check=False).rc == 0:
                    if waited >= self.options.stop_timeout:
                        raise RuntimeError(f"postmaster {pid} on {host.name} did not exit "
                                           f"within {self.options.stop_timeout:g} s")
                    fencing.pause(STOP_POLL)
                    waited += STOP_POLL
            last = self._last_checkpoint(host, data)
        except ConnectionError as exc:
            raise Unreachable(str(exc)) from None
        finally:
            host.close()
        out: Evidence = {"method": "ssh-stop", "already": already, "host": host.name}
        if pid is not None:
            out["pid"] = pid
        if last is not None:
            out["lastLsn"] = last
        return out

    def _last_checkpoint(self, host: Host, data: str) -> str | None:
        """The stopped cluster's last checkpoint LSN (its shutdown checkpoint)."""
        try:
            found = host.run([f"{self.options.pg_bin}/pg_controldata", "-D", data],
                             timeout=60)
        except (CommandError, PermanentError):
            return None
        for line in found.out.splitlines():
            if line.startswith("Latest checkpoint location:"):
                return line.split(":", 1)[1].strip()
        return None

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
        host = self._host(node)
        try:
            pid = self._pid(host, self._data(node))
        finally:
            host.close()
        if pid is None:
            raise RuntimeError(f"no postmaster.pid in {node.data} on {host.name}: is "
                               "PostgreSQL running there?")
        return f"{host.name} answers over SSH; postmaster {pid} running"

    def promote(self, node: Node, *, timeout: float) -> Evidence:
        if not self.state(node).in_recovery:
            raise PermanentError(f"{node.describe()} is not in recovery: there is nothing "
                                 "to promote")
        fencing.check()
        wait = max(1, math.ceil(timeout))
        rows = self._psql(node, f"SELECT pg_promote(true, {wait})", timeout=wait + 30)
        if not rows or rows[0][0] != "t":
            raise RuntimeError(f"{node.describe()}: pg_promote did not finish within "
                               f"{wait} s")
        return {"promoted": True}

    def ready(self) -> str | None:
        if (self.options.psql or find_psql()) is None:
            raise PermanentError("psql not found; install the PostgreSQL client")
        return None


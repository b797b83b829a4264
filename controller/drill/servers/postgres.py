"""PostgreSQL 15 launcher for the sandbox and the backup contract tests.

Owns one throw-away cluster: `initdb` into a fresh directory owned by the `postgres` OS
user (initdb refuses root, so every server command goes through `runuser -u postgres --`
when we are root), its own unix-socket directory and a free TCP port on loopback, start
with `pg_ctl -w`, SQL through `psql`, and stop by the postmaster's own PID (read from
`postmaster.pid`), never by name. `standby()` makes a streaming standby of a running
cluster (`pg_basebackup -R`, named by `cluster_name`, the application_name its WAL
receiver gives the primary). A missing binary raises at once with the package to
install, so a test never silently skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from controller.drill.processes import stop_pid
from controller.drill.servers.base import Launcher, ServerError, free_port

PG_BIN = Path(os.environ.get("FAILOVER_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def pg_tool(name: str) -> str:
    path = PG_BIN / name
    if not path.exists():
        raise ServerError(f"{path} not found: install PostgreSQL 15 "
                          "(apt-get install -y --no-install-recommends postgresql)")
    return str(path)


def as_user(argv: list[str], user: str = OS_USER) -> list[str]:
    """Prefix `runuser -u USER --` when we are root and USER is someone else."""
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *argv]
    return argv


def give_to(path: Path, user: str = OS_USER, mode: int = 0o700) -> None:
    """Create `path` (and parents) and hand it to `user`, as PostgreSQL demands."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    path.chmod(mode)


def archive_to_pgbackrest(server: PostgresServer, base: Path, *,
                          retention: int = 9999) -> Path:
    """Make `server` (not started yet) archive its WAL into a pgBackRest repository under
    `base`, stanza `main`, uncompressed; return the pgbackrest.conf."""
    for sub in ("", "repo", "log", "lock", "spool"):
        give_to(base / sub, mode=0o700 if sub else 0o755)
    conf = base / "pgbackrest.conf"
    conf.write_text(
        f"[global]\nrepo1-path={base}/repo\nlog-path={base}/log\nlock-path={base}/lock\n"
        f"spool-path={base}/spool\nstart-fast=y\ncompress-type=none\n"
        f"repo1-retention-full={retention}\n\n"
        f"[main]\npg1-path={server.data}\npg1-port={server.port}\n"
        f"pg1-socket-path={server.sock}\n")
    server.settings = {**server.settings, "archive_mode": "on", "archive_command":
                       f"'pgbackrest --config={conf} --stanza=main archive-push %p'"}
    return conf


class PostgresServer(Launcher):
    """One PostgreSQL cluster in `base` (data/, sock/, log) on its own port."""

    def __init__(self, base: Path, *, port: int | None = None,
                 settings: dict[str, str] | None = None, data: Path | None = None):
        self.base = Path(base)
        self.data = data or self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.port = port or free_port()
        self.settings = settings or {}
        self.pid: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def init(self) -> PostgresServer:
        initdb = pg_tool("initdb")
        give_to(self.base, mode=0o755)
        give_to(self.sock, mode=0o755)
        if not (self.data / "PG_VERSION").exists():
            give_to(self.data)
            self._run(as_user([initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                               "--no-sync", "-E", "UTF8", "--locale=C"]), "initdb")
        conf = {"listen_addresses": "'127.0.0.1'", "wal_level": "replica",
                "max_wal_senders": "4", "fsync": "off", "synchronous_commit": "off",
                "full_page_writes": "on", **self.settings}
        with (self.data / "postgresql.auto.conf").open("a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        return self

    def start(self) -> PostgresServer:
        pg_ctl = pg_tool("pg_ctl")
        if not self.log.exists():
            self.log.touch()
        if os.geteuid() == 0:
            pw = pwd.getpwnam(OS_USER)
            os.chown(self.log, pw.pw_uid, pw.pw_gid)
        opts = f"-p {self.port} -k {self.sock}"
        self._run(as_user([pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                           "-o", opts, "start"]), "pg_ctl start")
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def stop(self, *, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT) of our own postmaster, then SIGKILL if it lingers."""
        pid, self.pid = self.pid, None
        if pid is not None:
            stop_pid(pid, signal.SIGINT, timeout=timeout)

    def __enter__(self) -> PostgresServer:
        return self.init().start()

    def standby(self, base: Path, *, name: str = "standby") -> PostgresServer:
        """A streaming standby of this running cluster in `base`, started, on its own port
        (`pg_basebackup -R -X stream`; its `cluster_name` is `name`)."""
        standby = PostgresServer(base, settings={"cluster_name": f"'{name}'",
                                                 "hot_standby": "on"})
        give_to(standby.base, mode=0o755)
        give_to(standby.data)
        standby._run(as_user([pg_tool("pg_basebackup"), "-h", str(self.sock), "-p",
                              str(self.port), "-U", "postgres", "-D", str(standby.data),
                              "-R", "-X", "stream", "-c", "fast"]), "pg_basebackup")
        return standby.init().start()

    def wait_streaming(self, name: str = "standby", *, timeout: float = 30.0) -> None:
        """Wait until the standby `name` streams from this primary and has replayed all
        it was sent (raises ServerError after `timeout`)."""
        deadline = time.monotonic() + timeout
        query = ("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                 f"'{name}' AND state = 'streaming' AND replay_lsn = pg_current_wal_lsn()")
        while self.psql(query) != "1":
            if time.monotonic() > deadline:
                raise ServerError(f"standby {name} does not stream from port {self.port} "
                                  f"after {timeout:g} s")
            time.sleep(0.05)

    # --- SQL ---------------------------------------------------------------------------------

    def psql(self, sql: str, *, db: str = "postgres") -> str:
        """Run SQL, return unaligned tuples-only output (stripped)."""
        psql = pg_tool("psql")
        proc = subprocess.run(
            [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.sock),
             "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
            capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise ServerError(f"psql failed on port {self.port}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    @property
    def conninfo(self) -> dict[str, str]:
        return {"host": str(self.sock), "port": str(self.port), "user": "postgres"}

    def _run(self, argv: list[str], what: str) -> None:
        if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
            raise ServerError(f"{argv[0]} not found (needed for {what})")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        if proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise ServerError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}"
                              f"\n{proc.stdout.strip()}\n{tail}")

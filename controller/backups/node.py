"""A restored PostgreSQL node on some host: prepare, configure, start, promote, check, stop.

Owns the steps every restorer shares once the data files are in place, written against
`hosts.Host` so they run the same locally and over SSH. Server commands run as the
database OS user (`runuser -u postgres --` when the connection is root). The restored
node's archiving is switched off (it would otherwise push WAL into the *source's*
archive), its port and socket directory are set, and after start it is polled until
`pg_is_in_recovery()` is false (a freshly recovered node says true for a moment). The
plan's validation queries then decide whether the restore counts. It is stopped by the
postmaster's PID from `postmaster.pid`, never by name.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller.backups.hosts import CommandError, Host
from controller.model import PermanentError

_UNSAFE = re.compile(r"[^A-Za-z0-9 ._+@:,=/-]")


class RestoreFailed(PermanentError):
    """A restore phase failed; `phase` names it (fetch, verify, start, promote, validate)."""

    def __init__(self, phase: str, message: str):
        self.phase = phase
        super().__init__(f"restore failed at {phase}: {message}")


class ValidationQuery(BaseModel):
    """One check on the restored data: the first value must equal `expect` or be >= `min`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    sql: str
    database: str | None = None
    expect: str | None = None
    min: float | None = None


class TargetOptions(BaseModel):
    """`Target.options` of a restore: how to run the restored server and what to check."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    port: int = Field(5432, ge=1, le=65535)
    socket_dir: str = Field("/var/run/postgresql", alias="socketDir")
    os_user: str = Field("postgres", alias="osUser")
    pg_bin: str = Field("/usr/lib/postgresql/15/bin", alias="pgBin")
    database: str = "postgres"
    db_user: str = Field("postgres", alias="dbUser")
    validation: list[ValidationQuery] = Field(default_factory=list)
    overwrite: bool = Field(False, description="empty a non-empty data directory first")
    settings: dict[str, str] = Field(default_factory=dict,
                                     description="extra postgresql.conf settings")
    ssh_port: int | None = Field(None, alias="sshPort")
    recovery_target: str = Field("immediate", alias="recoveryTarget",
                                 description="pgBackRest: immediate, latest or a timestamp")
    promote_timeout: float = Field(120.0, alias="promoteTimeout", gt=0)
    start_timeout: int = Field(300, alias="startTimeout", gt=0)
    rpo: float | None = Field(None, description="RPO budget in seconds, for `rpoMet`")
    actor: str | None = None


class Node:
    """The PostgreSQL data directory `path` on `host`, run as `opts.os_user`."""

    def __init__(self, host: Host, path: str, opts: TargetOptions, *, root: bool):
        if not posixpath.isabs(path) or posixpath.normpath(path) in ("/", "/var", "/tmp"):
            raise PermanentError(f"restore target path {path!r} must be an absolute, "
                                 "dedicated data directory")
        for what, value in (("restore target path", path), ("socketDir", opts.socket_dir)):
            bad = sorted(set(_UNSAFE.findall(value)))
            if bad:  # pg_ctl and pg_verifybackup hand these paths to a shell themselves
                raise PermanentError(f"{what} {value!r} contains {''.join(bad)!r}: PostgreSQL's "
                                     "tools pass data paths through a shell, so only letters, "
                                     "digits, spaces and ._-+@:,=/ are accepted; rename it")
        if len(opts.socket_dir) + len(f"/.s.PGSQL.{opts.port}") > 107:
            raise PermanentError(f"socketDir {opts.socket_dir!r} is too long for a unix "
                                 "socket path (107 bytes at most with the file name)")
        self.host, self.path, self.opts, self.root = host, posixpath.normpath(path), opts, root

    def as_user(self, argv: list[str]) -> list[str]:
        if self.root and self.opts.os_user != "root":
            return ["runuser", "-u", self.opts.os_user, "--", *argv]
        return argv

    def bin(self, name: str) -> str:
        return posixpath.join(self.opts.pg_bin, name)

    # --- before the data arrives -------------------------------------------------------------

    def running_pid(self) -> int | None:
        got = self.host.run(["sh", "-c", f"head -1 {shlex.quote(self.path)}/postmaster.pid "
                             "2>/dev/null"], check=False).out.strip()
        if not got.isdigit():
            return None
        alive = self.host.run(["kill", "-0", got], check=False).rc == 0
        return int(got) if alive else None

    def prepare(self) -> None:
        """Create an empty data directory owned by the OS user, mode 0700."""
        pid = self.running_pid()
        if pid is not None:
            raise PermanentError(f"a PostgreSQL server (PID {pid}) is running on {self.path} "
                                 f"at {self.host.name}; stop it before restoring over it")
        listing = self.host.run(["sh", "-c", f"ls -A {shlex.quote(self.path)} 2>/dev/null | "
                                 "head -3"], check=False).out.split()
        if listing and not self.opts.overwrite:
            raise PermanentError(f"restore target {self.path} on {self.host.name} is not empty "
                                 f"({', '.join(listing)}…); set `overwrite: true` or pick an "
                                 "empty directory")
        if listing:
            self.host.run(["find", self.path, "-mindepth", "1", "-delete"])
        if self.root:
            self.host.run(["install", "-d", "-m", "0700", "-o", self.opts.os_user, self.path])
            self.host.run(["install", "-d", "-m", "0775", "-o", self.opts.os_user,
                           self.opts.socket_dir])
        else:
            self.host.run(["mkdir", "-p", self.path, self.opts.socket_dir])
            self.host.run(["chmod", "0700", self.path])
        if self.host.run(self.as_user(["test", "-w", self.path]), check=False).rc != 0:
            raise PermanentError(f"OS user {self.opts.os_user} cannot write {self.path} on "
                                 f"{self.host.name}: a parent directory is not searchable "
                                 "by it (e.g. mode 0700); pick a path it can reach")

    def clear(self) -> None:
        """Remove what a failed restore left (used when nothing may count as restored)."""
        self.host.run(["find", self.path, "-mindepth", "1", "-delete"], check=False)

    # --- configure, start, promote ----------------------------------------------------------

    def configure(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        settings = {"archive_mode": "off", "archive_command": "''",
                    "port": str(self.opts.port),
                    "unix_socket_directories": f"'{self.opts.socket_dir}'",
                    **(extra or {}), **self.opts.settings}
        text = "# set by the failover controller's restore\n" + "".join(
            f"{k} = {v}\n" for k, v in settings.items())
        self.host.run(self.as_user(["sh", "-c", f"cat >> {shlex.quote(self.path)}/"
                                    "postgresql.auto.conf"]), stdin=[text.encode()])
        self.host.run(["rm", "-f", f"{self.path}/standby.signal", f"{self.path}/postmaster.pid"])
        return settings

    def start(self) -> int:
        try:
            self.host.run(self.as_user([self.bin("pg_ctl"), "-D", self.path, "-l",
                                        f"{self.path}/restore-start.log", "-w", "-t",
                                        str(self.opts.start_timeout), "start"]),
                          timeout=self.opts.start_timeout + 30)
        except CommandError as exc:
            log = self.host.run(["sh", "-c", f"tail -20 {shlex.quote(self.path)}/"
                                 "restore-start.log"], check=False).out
            raise RestoreFailed("start", f"{exc}\n{log}") from None
        pid = self.running_pid()
        if pid is None:
            raise RestoreFailed("start", f"no postmaster running on {self.path} after start")
        return pid

    def sql(self, sql: str, *, database: str | None = None) -> str:
        return self.host.run(self.as_user([
            self.bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.opts.socket_dir, "-p", str(self.opts.port), "-U", self.opts.db_user,
            "-d", database or self.opts.database, "-c", sql]), timeout=300).out.strip()

    def wait_promoted(self) -> int:
        """Poll until `pg_is_in_recovery()` is false; returns the number of polls."""
        deadline, polls, last = time.monotonic() + self.opts.promote_timeout, 0, ""
        while True:
            polls += 1
            try:
                last = self.sql("SELECT pg_is_in_recovery()")
                if last == "f":
                    return polls
            except CommandError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise RestoreFailed("promote", f"still in recovery after "
                                    f"{self.opts.promote_timeout:g} s (last answer: {last})")
            time.sleep(0.1)

    def archiving(self) -> dict[str, str]:
        return {"archive_mode": self.sql("SHOW archive_mode"),
                "archive_command": self.sql("SHOW archive_command")}

    def last_replay(self) -> float | None:
        got = self.sql("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())")
        return float(got) if got else None

    def validate(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for q in self.opts.validation:
            started = time.monotonic()
            try:
                value = self.sql(q.sql, database=q.database).splitlines()
                first = value[0] if value else ""
                ok, why = True, ""
                if q.expect is not None and first != q.expect:
                    ok, why = False, f"expected {q.expect!r}"
                if q.min is not None:
                    try:
                        if float(first) < q.min:
                            ok, why = False, f"expected at least {q.min:g}"
                    except ValueError:
                        ok, why = False, f"expected a number >= {q.min:g}"
            except CommandError as exc:
                first, ok, why = "", False, str(exc)
            results.append({"name": q.name, "passed": ok, "value": first[:200],
                            "detail": why, "seconds": round(time.monotonic() - started, 3)})
        failed = [r for r in results if not r["passed"]]
        if failed:
            raise RestoreFailed("validate", "; ".join(
                f"{r['name']}: got {r['value']!r}, {r['detail']}" for r in failed))
        return results

    def stop(self, *, timeout: float = 60.0) -> None:
        """Fast shutdown by PID (SIGINT), SIGKILL if it does not go."""
        pid = self.running_pid()
        if pid is None:
            return
        self.host.run(["kill", "-INT", str(pid)], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.host.run(["kill", "-0", str(pid)], check=False).rc != 0:
                return
            time.sleep(0.05)
        self.host.run(["kill", "-KILL", str(pid)], check=False)

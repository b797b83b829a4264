"""A restored PostgreSQL node on some host: its target, prepare, receive, settings, stop.

Owns the steps every restorer shares around the data files, written against `hosts.Host`
so they run the same locally and over SSH. Server commands run as the database OS user
(`runuser -u postgres --` when the connection is root). The restored node's archiving is
switched off (it would otherwise push WAL into the *source's* archive) and its port and
socket directory are set (`settings`; written by the finish session, `finish`, which
also starts, promotes and validates it). It is stopped by the postmaster's PID from
`postmaster.pid`, never by name.

A restore never writes into the target directly: the data arrives beside it and is
swapped in once proven, an earlier attempt's unfinished work is recognised by its marker
and undone, and a failure puts the target back as it was (`swap` owns those rules and the
shell that moves directories; this module runs it).

A restore is two sessions on the host, not one per command: `receive` (the prepare
script -- inspect the target, make the side directory -- then the data stream into `tar`
in the same session; pgBackRest restores run `prepare` alone) and the finish session
(`finish`: extract, verify, configure, swap, start, promote, validate, commit). Over SSH
each session costs round trips and the login shell's startup. Scripts are built with
`shlex.quote`/`shlex.join`, and paths are still refused if they hold shell-active
characters (PostgreSQL's own tools pass them through a shell).

A restore stops when its step is cancelled (the step's timeout passed, or the controller
lost its lease; see `controller.fencing`): the fence is checked before the prepare and
before every chunk of the stream (the caller's iterator); a cancel or a failure while
receiving removes the side directory, so the target is as it was, and the error is
raised (`fencing.Cancelled` first).
"""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
import time
from collections.abc import Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups import swap
from controller.backups.hosts import Chunk, CommandError, Host, Result, is_root_on
from controller.model import PermanentError
from controller.secrets import redact

log = logging.getLogger(__name__)
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
    min: float | None = Field(None, allow_inf_nan=False)


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
    overwrite: bool = Field(False, description="a non-empty data directory may be replaced: "
                            "it is kept aside until the restored node passed validation")
    settings: dict[str, str] = Field(default_factory=dict,
                                     description="extra postgresql.conf settings")
    ssh_port: int | None = Field(None, alias="sshPort")
    recovery_target: str | None = Field(
        None, alias="recoveryTarget", description="pgBackRest: immediate, latest or a "
        "timestamp; default latest (end of the WAL archive) for a continuous backup, "
        "immediate (end of the base backup) otherwise")
    fault_at: float | None = Field(None, alias="faultAt", description="when the failure "
                                   "happened (epoch seconds): the RPO is measured against it; "
                                   "default when the restore started")
    promote_timeout: float = Field(120.0, alias="promoteTimeout", gt=0)
    start_timeout: int = Field(300, alias="startTimeout", gt=0)
    rpo: float | None = Field(None, description="RPO budget in seconds, for `rpoMet`")
    actor: str | None = None


class Node:
    """The PostgreSQL data directory `path` on `host`, run as `opts.os_user`.

    Each phase that runs several commands runs them as one shell script (values quoted
    with `shlex.quote`), so a restore costs a handful of remote sessions, not one per
    command: over SSH every session pays the round trips and the login shell's startup.
    """

    def __init__(self, host: Host, path: str, opts: TargetOptions, *,
                 root: bool | None = None, backup: str = "", run: str = ""):
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
        self.host, self.path, self.opts = host, posixpath.normpath(path), opts
        self.layout = swap.Layout(self.path, backup, run)
        self._root = root
        self.cleared: str | None = None  # "STATE BACKUP": an earlier attempt's work undone

    @property
    def root(self) -> bool:
        """Whether commands run as root on the host (then server commands use runuser)."""
        if self._root is None:
            self._root = is_root_on(self.host)
        return self._root

    def as_user(self, argv: list[str]) -> list[str]:
        if self.root and self.opts.os_user != "root":
            return ["runuser", "-u", self.opts.os_user, "--", *argv]
        return argv

    def bin(self, name: str) -> str:
        return posixpath.join(self.opts.pg_bin, name)

    def psql_argv(self, sql: str, *, database: str | None = None,
                  extra: tuple[str, ...] = ()) -> list[str]:
        return [self.bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *extra,
                "-h", self.opts.socket_dir, "-p", str(self.opts.port), "-U", self.opts.db_user,
                "-d", database or self.opts.database, "-c", sql]

    # --- before the data arrives -------------------------------------------------------------

    def running_pid(self) -> int | None:
        got = self.host.run(["sh", "-c", f"head -1 {shlex.quote(self.path)}/postmaster.pid "
                             "2>/dev/null"], check=False).out.strip()
        if not got.isdigit():
            return None
        alive = self.host.run(["kill", "-0", got], check=False).rc == 0
        return int(got) if alive else None

    def _prepare_script(self, then: str = "") -> str:
        """Inspect the target (see `swap.INSPECT`), then make the side directory the data
        arrives in; `then` runs only once it is ready."""
        q = shlex.quote
        return f"""cd / || exit 1
{self.layout.variables()}; D={q(self.opts.socket_dir)}; U={q(self.opts.os_user)}
{swap.FUNCTIONS}uid=$(id -u) || exit 1
echo "uid=$uid"
{swap.INSPECT}if [ -n "$(ls -A "$P" 2>/dev/null | head -1)" ]; then
  ls -A "$P" | head -3 | sed 's/^/entry=/'
  if [ "$st" = done ]; then echo "holds=$(mfield backup)"; fi
  [ {1 if self.opts.overwrite else 0} = 1 ] || exit 0
fi
mkdir -p -- "${{P%/*}}/" || exit 1
marker receiving "" || {{ echo "parent=unwritable"; exit 0; }}
if [ "$uid" = 0 ]; then
  install -d -m 0700 -o "$U" "$S" && install -d -m 0775 -o "$U" "$D" || exit 1
else
  mkdir -p "$S" "$D" && chmod 0700 "$S" || exit 1
fi
if [ "$uid" = 0 ] && [ "$U" != root ]; then runuser -u "$U" -- test -w "$S"
else test -w "$S"; fi || {{ echo "writable=no"; undo; exit 0; }}
echo "ready=yes"
{then}"""

    def prepare(self) -> None:
        """Make the side directory a restore writes into, owned by the OS user, mode 0700.

        One script: who we are, a server running on the target (refused, unless it is
        ours for this backup: `swap.AlreadyThere`), work an earlier attempt left in flight
        (undone), what the target holds (refused unless `overwrite`), create the side
        directory, and can the OS user write it. It answers in `key=value` lines; the
        refusals are decided here.
        """
        fencing.check()
        argv = ["sh", "-c", self._prepare_script()]
        self._prepared(argv, self.host.run(argv, check=False))

    def receive(self, argv: list[str], stdin: Iterable[Chunk]) -> None:
        """`prepare`, then `argv` as the OS user reading `stdin` (it writes into
        `layout.side`), in ONE session (over SSH a session costs round trips and the login
        shell's startup). A refusal ends the session before it reads anything. If `argv`
        fails, or `stdin` raises, after the side directory was made, it is removed: the
        target was never touched. An interrupt or a cancelled step (`fencing.Cancelled`,
        raised by `stdin` between chunks) is raised after that cleanup, whatever the
        command said."""
        fencing.check()
        j = shlex.join
        then = (f'if [ "$uid" = 0 ] && [ "$U" != root ]; then exec runuser -u "$U" -- '
                f"{j(argv)}; else exec {j(argv)}; fi\n")
        script = ["sh", "-c", self._prepare_script(then)]
        stream = _Guarded(stdin)
        result = self.host.run(script, stdin=stream, timeout=24 * 3600, check=False)
        failed = stream.error is not None or result.rc != 0
        if failed and "ready=yes" in result.out.splitlines():
            self.undo()  # only the side directory this script made
        if stream.error is not None and (not isinstance(stream.error, Exception)
                                         or isinstance(stream.error, fencing.Cancelled)):
            raise stream.error  # an interrupt or a cancel outranks any verdict
        self._prepared(script, result, streamed=True)
        if stream.error is not None:
            raise stream.error
        if result.rc != 0:
            raise RestoreFailed("fetch", str(CommandError(self.host.name, argv, result)))

    def _prepared(self, argv: list[str], result: Result, *, streamed: bool = False) -> None:
        """Judge the prepare script's `key=value` answers; return once the side directory
        is ready (with `streamed`, what ran after it is judged by the caller)."""
        got: dict[str, str] = {}
        entries: list[str] = []
        for line in result.out.splitlines():
            key, _, value = line.partition("=")
            if key == "entry":
                entries.append(value)
            else:
                got[key] = value
        if "uid" in got:
            self._root = got["uid"] == "0"
        where, lay = f"{self.path} on {self.host.name}", self.layout
        self.cleared = got.get("cleared")
        if "ours" in got:
            raise swap.AlreadyThere(swap.State(got["ours"]))
        if "running" in got:
            raise PermanentError(f"a PostgreSQL server (PID {got['running']}) is running on "
                                 f"{where}; stop it before restoring over it")
        if "undo" in got:
            raise PermanentError(f"an unfinished restore onto {where} is recorded in "
                                 f"{lay.marker} but could not be undone: "
                                 f"{result.err.strip()[-800:]}; put {lay.aside} back "
                                 f"(if present) and remove {lay.side} and the marker")
        if "inway" in got:
            raise PermanentError(f"{got['inway']} on {self.host.name} is in the way: a "
                                 f"restore onto {self.path} builds the new data directory in "
                                 f"{lay.side} and keeps the replaced one in {lay.aside}, but "
                                 f"no restore of ours is in flight ({lay.marker} says none); "
                                 "move it away")
        if "mountpoint" in got:
            raise PermanentError(f"restore target {where} is a mount point: a restore "
                                 "builds the new data directory beside it and swaps them "
                                 "by rename, which cannot move a mount point; restore into "
                                 "a directory inside the mount")
        if "parent" in got:
            raise PermanentError(f"cannot write beside {where} "
                                 f"({posixpath.dirname(self.path)} is not writable by the "
                                 "login): a restore keeps its marker and the new data "
                                 "directory next to the target and swaps them by rename; "
                                 "make the parent directory writable for it")
        if entries and not self.opts.overwrite:
            holds = (f"; it holds backup {got['holds']}, restored earlier and not running"
                     if "holds" in got else "")
            raise PermanentError(f"restore target {self.path} on {self.host.name} is not empty "
                                 f"({', '.join(entries)}…){holds}; set `overwrite: true` "
                                 "(the data is kept aside until the restore passed "
                                 "validation) or pick an empty directory")
        if got.get("ready") == "yes" and (streamed or result.rc == 0):
            return
        if result.rc != 0:
            raise CommandError(self.host.name, argv, result)
        raise PermanentError(f"OS user {self.opts.os_user} cannot write {lay.side} on "
                             f"{self.host.name}: a parent directory is not searchable "
                             "by it (e.g. mode 0700); pick a path it can reach")

    def undo(self) -> None:
        """Put the target back as it was before the restore in flight (see `swap.undo`):
        used when the restore failed and the script that did the work could not."""
        try:
            result = self.host.run(["sh", "-c", swap.undo_script(self.layout)], check=False)
        except Exception as exc:  # the restore's own error is the one raised
            log.error("could not undo the restore onto %s on %s: %s (a resumed restore "
                      "will, from %s)", self.path, self.host.name, exc, self.layout.marker)
            return
        if result.rc != 0:
            log.error("could not undo the restore onto %s on %s: %s", self.path,
                      self.host.name, redact(result.err.strip()[-800:]))

    # --- after the data arrives (the finish session: `finish`) ---------------------------

    def settings(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the restore appends to postgresql.auto.conf: archiving off, port, socket."""
        return {"archive_mode": "off", "archive_command": "''",
                "port": str(self.opts.port),
                "unix_socket_directories": f"'{self.opts.socket_dir}'",
                **(extra or {}), **self.opts.settings}

    def sql(self, sql: str, *, database: str | None = None) -> str:
        return self.host.run(self.as_user(self.psql_argv(sql, database=database)),
                             timeout=300).out.strip()

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


class _Guarded:
    """Chunks passed through until the source raises; the error is kept for afterwards,
    so the host command sees an early end of input instead of being killed unjudged."""

    def __init__(self, chunks: Iterable[Chunk]):
        self.chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Chunk]:
        try:
            yield from self.chunks
        except GeneratorExit:  # the host stopped reading (the command ended): not an error
            raise
        except BaseException as exc:  # even an interrupt: clean up first, then raise it
            self.error = exc

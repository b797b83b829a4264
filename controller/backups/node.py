"""A restored PostgreSQL node on some host: prepare, configure, start, promote, check, stop.

Owns the steps every restorer shares once the data files are in place, written against
`hosts.Host` so they run the same locally and over SSH. Server commands run as the
database OS user (`runuser -u postgres --` when the connection is root). The restored
node's archiving is switched off (it would otherwise push WAL into the *source's*
archive), its port and socket directory are set, and after start it is polled every
50 ms until `pg_is_in_recovery()` is false (a freshly recovered node says true for a
moment). The plan's validation queries then decide whether the restore counts. It is
stopped by the postmaster's PID from `postmaster.pid`, never by name.

A restore never writes into the target directly: the data arrives beside it and is
swapped in once proven, an earlier attempt's unfinished work is recognised by its marker
and undone, and a failure puts the target back as it was (`swap` owns those rules and the
shell that moves directories; this module runs it).

A restore is two sessions on the host, not one per command: `receive` (the prepare
script -- inspect the target, make the side directory -- then the data stream into `tar`
in the same session; pgBackRest restores run `prepare` alone) and `finish` (one script:
extract, pg_verifybackup, configure, swap, start, promote, archiving check, validation
queries judged on the host, commit, with phase markers timed on the host's clock). Over
SSH each session costs round trips and the login shell's startup. Scripts are built with
`shlex.quote`/`shlex.join`, and paths are still refused if they hold shell-active
characters (PostgreSQL's own tools pass them through a shell).

A restore stops when its step is cancelled (the step's timeout passed, or the controller
lost its lease; see `controller.fencing`), and nothing is started after that: the fence is
checked before the prepare, before every chunk of the stream (the caller's iterator) and
before the finish session is told to go. Once it runs, the finish script checks a
cancel flag (a file the controller touches, in the session's own command channel) before
every phase and in the promote poll loop, and long commands (pgbackrest restore, tar,
pg_verifybackup, validation queries) are terminated when it appears; `pg_ctl start -w`
is let finish (killing it could leave a postmaster that has no PID file yet) and the
server it started is then stopped by its PID. A cancelled restore cleans up like a
failed one: the server it started is stopped, the swap undone and the side directory
removed, so the target is as it was, and `fencing.Cancelled` is raised.
"""

from __future__ import annotations

import base64
import itertools
import logging
import posixpath
import queue
import re
import secrets
import shlex
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups import swap
from controller.backups.hosts import CommandError, Host, Result, is_root_on
from controller.model import PermanentError
from controller.secrets import redact

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9 ._+@:,=/-]")
SEP = "\x1f"  # between the columns of the settings query (never in a setting's value)
PSQL_TIMEOUT = 300  # seconds one psql (a poll, a validation query) may take
CANCEL_POLL = 0.1  # seconds between the finish script's looks at its cancel flag
# what `go` adds when every file's SHA-256 was checked against the manifest while it
# streamed (see `manifest`): pg_verifybackup then skips its own checksum pass
PROVEN = "checksums-proven"
# a validation query's value: its first non-blank line, trimmed; a number for `min` is
# what both the host's awk and Python's float read alike
_FIRST_LINE = "/[^[:space:]]/{s/^[[:space:]]*//;s/[[:space:]]*$//;p;q;}"
NUMBER = r"^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"


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

    def receive(self, argv: list[str], stdin: Iterable[bytes]) -> None:
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

    # --- after the data arrives: extract, verify, configure, start, promote, validate -------

    def settings(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What the restore appends to postgresql.auto.conf: archiving off, port, socket."""
        return {"archive_mode": "off", "archive_command": "''",
                "port": str(self.opts.port),
                "unix_socket_directories": f"'{self.opts.socket_dir}'",
                **(extra or {}), **self.opts.settings}

    def finish(self, *, fetch: list[str] | None = None, extract_tars: bool = False,
               verify: bool = False, check_only: bool = False,
               settings: dict[str, str] | None = None) -> dict[str, Any]:
        """Bring the restored files up at the target and prove them, in ONE remote session.

        In order, each step only if the previous one succeeded: `fetch` (a restore command
        writing into `layout.side`, e.g. `pgbackrest restore`), extract tar-format files,
        `pg_verifybackup` against the manifest, configure (archiving off, port, socket,
        `settings`), swap the side directory in (`swap.SWAP`), `pg_ctl start -w`, poll
        `pg_is_in_recovery()` every 50 ms until false (or `promoteTimeout`), read
        archive_mode/archive_command and the last replayed transaction's time -- refusing
        to go on unless archive_mode is off -- then each validation query in its own psql,
        judged on the host, then commit (`swap.COMMIT`). A failure or a cancel stops the
        server it started and undoes the swap, so the target is as it was. With
        `check_only`, the node already running at the target is promoted-checked,
        validated and committed, and nothing is started, stopped or undone.
        Phase timings come from the host's clock between markers. Raises RestoreFailed
        naming the phase, or `fencing.Cancelled` when the step is cancelled meanwhile
        (see the module docstring); returns phases, pid, polls, archiving, lastReplay,
        validation, replaced.
        """
        return self.begin_finish(fetch=fetch, extract_tars=extract_tars, verify=verify,
                                 check_only=check_only, settings=settings).go()

    def begin_finish(self, *, fetch: list[str] | None = None, extract_tars: bool = False,
                     verify: bool = False, check_only: bool = False,
                     settings: dict[str, str] | None = None) -> PendingFinish:
        """Open the `finish` session now; it runs nothing until `go()` (see PendingFinish)."""
        # the cancel flag: a name nobody can guess, in the login's /tmp on the host
        flag = f"/tmp/.failover-restore-{secrets.token_hex(12)}.cancel"
        script = self._finish_script(fetch=fetch, extract_tars=extract_tars, verify=verify,
                                     check_only=check_only, settings=settings, flag=flag)
        budget = (24 * 3600 + self.opts.start_timeout + self.opts.promote_timeout
                  + 330 * (len(self.opts.validation) + 2))
        return PendingFinish(self, script, budget, flag, own=not check_only)

    def _finish_script(self, *, fetch: list[str] | None, extract_tars: bool,
                       verify: bool, check_only: bool, settings: dict[str, str] | None,
                       flag: str) -> str:
        q, j, o = shlex.quote, shlex.join, self.opts
        p, side = self.path, self.layout.side
        psql = f"watch timeout {PSQL_TIMEOUT}"  # a hung query ends; its psql exits 124
        conf = "# set by the failover controller's restore\n" + "".join(
            f"{k} = {v}\n" for k, v in self.settings(settings).items())
        append = self.as_user(["sh", "-c", f"cat >> {q(side)}/postgresql.auto.conf"])
        lines = [
            # wait for the word: nothing runs unless the caller says `go` (EOF: exit quietly)
            'read -r go how || exit 0; [ "$go" = go ] || exit 0; exec </dev/null',
            "cd / || exit 1",  # the OS user may not enter the login's home (psql warns)
            f"{self.layout.variables()}; C={q(flag)}; started=; bad=",
            f"own={'' if check_only else 1}",  # the target's state is ours to undo
            swap.FUNCTIONS.rstrip("\n"),
            # a failure or a cancel: stop the server this script started (by its PID),
            # immediate shutdown (no checkpoint: it is undone right after), then undo
            # (alive: a zombie is not; it waits for whoever reaps orphans)
            'alive() { kill -0 "$1" 2>/dev/null || return 1',
            "  case \"$(sed -n 's/^State:[[:space:]]*//p' \"/proc/$1/status\" 2>/dev/null)\" in",
            "    Z*) return 1;; esac; }",
            "stop_server() {",
            '  pid=$(head -1 "$P/postmaster.pid" 2>/dev/null)',
            '  case "$pid" in ""|*[!0-9]*) return 0;; esac',
            '  kill -QUIT "$pid" 2>/dev/null || return 0',
            "  n=0; while alive \"$pid\"; do n=$((n + 1))",
            '    if [ "$n" -gt 1200 ]; then kill -KILL "$pid" 2>/dev/null; break; fi',
            "    sleep 0.05; done",
            "}",
            'abandon() { if [ -n "$started" ]; then stop_server; fi',
            '  if [ -n "$own" ]; then undo || echo "@@undo failed"; fi; }',
            'cancel() { abandon; echo "@@cancelled $1"; exit 4; }',
            'check() { if [ -e "$C" ]; then cancel "$1"; fi; }',
            # the command a wrapper (timeout, runuser) runs: runuser that gets a signal
            # waits 2 s before it kills its child, one whose child ends exits at once
            "inner() { p=$1; while :; do",
            '  case "$(cat "/proc/$p/comm" 2>/dev/null)" in runuser|timeout) ;; *) break;; esac',
            '  k=$(cat /proc/"$p"/task/*/children 2>/dev/null); k=${k%% *}',
            '  case "$k" in ""|*[!0-9]*) break;; esac; p=$k; done; echo "$p"; }',
            # a long command runs in the background and is terminated if the flag appears
            "watch() {",
            '  "$@" & w=$!',
            f'  ( while [ ! -e "$C" ]; do kill -0 "$w" 2>/dev/null || exit 0; '
            f"sleep {CANCEL_POLL}; done",
            '    kill -TERM "$(inner "$w")" 2>/dev/null ) </dev/null >/dev/null 2>&1 &',
            '  wait "$w"',
            "}",
            "mark() { check \"$1\"; echo \"@@phase $1\" >&2; "
            "echo \"@@mark $1 $(date +%s.%N)\"; }",
            'fail() { check "$1"; abandon; echo "@@fail $1"; exit 3; }',
        ]
        if fetch is not None:
            lines += ["mark fetch", f"watch {j(self.as_user(fetch))} >&2 || fail fetch"]
        if extract_tars:
            untar = j(self.as_user(["tar", "-x", "-f"]))
            lines += [
                "mark extract",
                'for t in "$S"/base.tar*; do [ -e "$t" ] || continue',
                f'  watch {untar} "$t" -C "$S" >&2 && rm -f "$t" || fail extract',
                "done",
                'if [ -f "$S/pg_wal.tar" ]; then',
                f'  watch {untar} "$S/pg_wal.tar" -C "$S/pg_wal" >&2 && rm -f "$S/pg_wal.tar" '
                "|| fail extract",
                "fi",
            ]
        if verify:  # its checksum pass only when the stream did not prove every file's
            full = j(self.as_user([self.bin("pg_verifybackup"), "-q", side]))
            rest = j(self.as_user([self.bin("pg_verifybackup"), "-q", "--skip-checksums",
                                   side]))
            lines += ["mark verify",
                      f'if [ "$how" = {PROVEN} ]; then watch {rest} >&2; '
                      f"else watch {full} >&2; fi || fail verify"]
        pg_ctl = self.as_user([self.bin("pg_ctl"), "-D", p, "-l", f"{p}/restore-start.log",
                               "-w", "-t", str(o.start_timeout), "start"])
        # one query per poll: in recovery?, then (read once it says f) the archiving
        # settings and the last replayed transaction's time
        poll_sql = ("SELECT pg_is_in_recovery(), current_setting('archive_mode'), "
                    "current_setting('archive_command'), coalesce(extract(epoch FROM "
                    "pg_last_xact_replay_timestamp())::text, '')")
        poll = self.as_user(self.psql_argv(poll_sql, extra=("-F", SEP)))
        if not check_only:
            lines += [
                "mark swap",
                f"printf '%s' {q(conf)} | {j(append)} >&2 || fail swap",
                'rm -f "$S/standby.signal" "$S/postmaster.pid" >&2 || fail swap',
                swap.SWAP.rstrip("\n"),
                "mark start",
                "check start; started=1",  # from here a cancel also stops the server
                f'{j(pg_ctl)} >&2 || {{ tail -20 "$P/restore-start.log" >&2; fail start; }}',
                "check start",
            ]
        lines += [
            'pid=$(head -1 "$P/postmaster.pid" 2>/dev/null)',
            'case "$pid" in ""|*[!0-9]*) pid="";; esac',
            'if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then',
            '  echo "no postmaster running on $P after start" >&2; fail start; fi',
            'echo "@@pid $pid"',
            "mark promote",
            f"end=$(( $(date +%s) + {int(o.promote_timeout) + 1} )); polls=0",
            "while :; do",
            "  check promote; polls=$((polls + 1))",
            f"  r=$(timeout {PSQL_TIMEOUT} {j(poll)} 2>&1)",
            f'  case "$r" in f{q(SEP)}*) s=${{r#f{q(SEP)}}}; break;; esac',
            '  if [ "$(date +%s)" -ge "$end" ]; then',
            "    printf 'still in recovery after %s s (last answer: %s)\n' "
            f"{q(f'{o.promote_timeout:g}')} \"${{r%%{q(SEP)}*}}\" >&2; fail promote",
            "  fi",
            "  sleep 0.05",
            "done",
            'echo "@@polls $polls"',
            "echo \"@@settings $(printf '%s' \"$s\" | base64 -w0)\"",
            f'case "$s" in off{q(SEP)}*) ;; *) fail archiving;; esac',
            "mark validate",
        ]
        for i, v in enumerate(o.validation):
            argv = self.as_user(self.psql_argv(v.sql, database=v.database))
            lines += [
                f"echo '@@query {i}' >&2",
                "t=$(date +%s.%N)",
                f"out=$({psql} {j(argv)}); rc=$?; check validate",
                # judged here, so that a failed check is undone before anything is removed
                f"first=$(printf '%s\\n' \"$out\" | sed -n {q(_FIRST_LINE)})",
                'v=ok; if [ "$rc" != 0 ]; then v=error; else :',
                *([f'  [ "$first" = {q(v.expect)} ] || v=expect'] if v.expect is not None
                  else []),
                *([f"  if printf '%s' \"$first\" | grep -Eq {q(NUMBER)}; then",
                   f"    awk -v v=\"$first\" -v m={q(repr(v.min))} "
                   "'BEGIN { exit !(v + 0 >= m + 0) }' || v=min",
                   "  else v=nan; fi"] if v.min is not None else []),
                'fi; [ "$v" = ok ] || bad=1',
                f"echo \"@@result {i} $rc $t $(date +%s.%N) $v "
                "$(printf '%s' \"$first\" | head -c 65536 | base64 -w0)\"",
            ]
        lines += ['[ -z "$bad" ] || fail validate', "mark commit", swap.COMMIT.rstrip("\n"),
                  "mark done"]
        return "\n".join(lines) + "\n"

    def _parse_finish(self, result: Result, *, cancel: str | None = None,
                      own: bool = True) -> dict[str, Any]:
        """Judge the finish script's output. `cancel` is the reason the caller raised the
        cancel flag for: if the script stopped on it, `fencing.Cancelled` is raised (the
        script already stopped a server it started and undid the swap). `own`: the script
        restored (not `check_only`), so what it left is undone if it died."""
        marks: list[tuple[str, float]] = []
        failed: str | None = None
        got: dict[str, Any] = {"validation": {}}
        for line in result.out.splitlines():
            word, _, rest = line.partition(" ")
            if word == "@@cancelled":
                where = rest.strip()
                raise fencing.Cancelled(
                    f"restore onto {self.path} on {self.host.name} stopped "
                    + ("after validation" if where == "done" else f"at {where}")
                    + f": {cancel or 'cancelled'}; the server it started (if any) was "
                    "stopped and the target left as it was"
                    + (" (undo FAILED: see the log)" if "undo" in got else ""))
            if word == "@@mark":
                name, _, at = rest.partition(" ")
                marks.append((name, float(at)))
            elif word == "@@fail":
                failed = rest.strip()
            elif word == "@@undo":
                got["undo"] = rest
            elif word in ("@@aside", "@@kept"):
                got[word[2:]] = rest.strip()
            elif word == "@@pid":
                got["pid"] = int(rest)
            elif word == "@@polls":
                got["polls"] = int(rest)
            elif word == "@@settings":
                got["settings"] = base64.b64decode(rest.strip()).decode(errors="replace")
            elif word == "@@result":
                i, rc, t0, t1, verdict, *value = rest.split(" ")
                text = base64.b64decode(value[0] if value else "").decode(errors="replace")
                got["validation"][int(i)] = (int(rc), float(t1) - float(t0), verdict, text)
        phases = {name: later - at for (name, at), (_, later) in itertools.pairwise(marks)}
        died = failed is None and bool(marks) and marks[-1][0] != "done"
        if died:  # the script died inside this phase: nothing undid its work
            failed = marks[-1][0]
            if own and "pid" in got:  # the server it started: stopped before the undo
                self.stop()
            if own:
                self.undo()
        if (failed is None and result.rc != 0) or not marks:
            raise CommandError(self.host.name, ["sh", "-c", "<restore steps>"], result)
        errors = _segments(result.err)
        if failed is not None:
            detail = redact(errors.get(failed, "").strip()[-1500:] or f"exit {result.rc}")
            if "undo" in got:
                detail += (f"; putting the target back FAILED: see {self.layout.marker} "
                           f"and {self.layout.aside}")
            if failed == "verify":
                raise RestoreFailed("verify", "pg_verifybackup rejected the restored files: "
                                    f"{detail}")
            if failed == "archiving":
                mode = got.get("settings", "").split(SEP)[0]
                raise RestoreFailed("start", f"archive_mode is {mode} on the restored node; it "
                                    "would archive into the source's repository")
            if failed == "validate" and not died:
                self._judge(got["validation"], errors)  # raises, naming each failed check
            raise RestoreFailed(failed, f"on {self.host.name}: {detail}")
        mode, command, replay = [*got["settings"].split(SEP), "", ""][:3]
        aside = got.get("aside")
        return {"phases": phases, "pid": got["pid"], "polls": got["polls"],
                "archiving": {"archive_mode": mode, "archive_command": command},
                "lastReplay": float(replay) if replay else None,
                "validation": self._judge(got["validation"], errors),
                "replaced": None if aside is None else {"path": aside,
                                                        "removed": "kept" not in got}}

    def _judge(self, answers: dict[int, tuple[int, float, str, str]],
               errors: dict[str | int | None, str]) -> list[dict[str, Any]]:
        """The host's verdict on each validation query, as evidence; raises RestoreFailed
        naming every failed one."""
        results: list[dict[str, Any]] = []
        for i, q in enumerate(self.opts.validation):
            rc, seconds, verdict, first = answers.get(i, (-1, 0.0, "error", ""))
            why = {"ok": "", "expect": f"expected {q.expect!r}",
                   "min": f"expected at least {q.min:g}" if q.min is not None else "",
                   "nan": f"expected a number >= {q.min:g}" if q.min is not None else ""
                   }.get(verdict)
            if why is None:
                tail = errors.get(i, "").strip()[-800:]
                first, why = "", redact(f"on {self.host.name}: psql exited {rc}: {tail}")
            results.append({"name": q.name, "passed": verdict == "ok", "value": first[:200],
                            "detail": why, "seconds": round(seconds, 3)})
        failed = [r for r in results if not r["passed"]]
        if failed:
            raise RestoreFailed("validate", "; ".join(
                f"{r['name']}: got {r['value']!r}, {r['detail']}" for r in failed))
        return results

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


class PendingFinish:
    """A `Node.finish` script already started on the host, waiting on its stdin for `go`.

    Opening a session costs round trips and the login shell's startup on the host; the
    restorer opens this one while the data is still streaming, so that cost overlaps the
    transfer. Nothing runs before `go()` (called only once the whole stream was
    authenticated and extracted); `abort()` ends it having done nothing.
    """

    def __init__(self, node: Node, script: str, budget: float, flag: str, *, own: bool):
        self.node, self.flag, self.own = node, flag, own
        self._gate: queue.Queue[bytes | None] = queue.Queue()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(script, budget), daemon=True,
                                         name="restore-finish")
        self._thread.start()

    def _words(self) -> Iterator[bytes]:
        word = self._gate.get()
        if word is not None:
            yield word

    def _run(self, script: str, budget: float) -> None:
        try:
            self._result = self.node.host.run(["sh", "-c", script], stdin=self._words(),
                                              timeout=budget, check=False)
        except BaseException as exc:  # handed to the caller by go()
            self._error = exc

    def go(self, *, checksums_proven: bool = False) -> dict[str, Any]:
        """Run the script and judge it. `checksums_proven`: every file's SHA-256 was
        checked against the backup's manifest while it streamed (`manifest.StreamedFiles`),
        so `pg_verifybackup` checks the rest only (`--skip-checksums`). Inside a step, the
        step's fence is watched while it runs: once cancelled, the cancel flag is raised on
        the host (a separate command) and the script stops at its next check (see the
        module docstring)."""
        fence = fencing.current()
        try:
            fencing.check()
        except fencing.Cancelled:  # nothing starts; what the restore wrote is removed
            self.abort()
            if self.own:
                self.node.undo()
            raise
        self._gate.put(f"go {PROVEN}\n".encode() if checksums_proven else b"go\n")
        cancel: str | None = None
        while self._thread.is_alive():
            self._thread.join(None if fence is None or cancel is not None else CANCEL_POLL)
            if fence is not None and fence.cancelled and cancel is None:
                cancel = fence.reason or "cancelled"
                if self._thread.is_alive():
                    try:
                        self.node.host.run(["touch", self.flag], check=False)
                    except Exception as exc:  # the session ends with the connection
                        log.warning("could not raise the cancel flag on %s: %s",
                                    self.node.host.name, exc)
        if cancel is not None:  # the script has ended: its flag must not outlive it
            try:
                self.node.host.run(["rm", "-f", self.flag], check=False)
            except Exception as exc:
                log.warning("could not remove the cancel flag %s on %s: %s", self.flag,
                            self.node.host.name, exc)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self.node._parse_finish(self._result, cancel=cancel, own=self.own)

    def abort(self) -> None:
        self._gate.put(None)
        self._thread.join(60)


class _Guarded:
    """Chunks passed through until the source raises; the error is kept for afterwards,
    so the host command sees an early end of input instead of being killed unjudged."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
        except GeneratorExit:  # the host stopped reading (the command ended): not an error
            raise
        except BaseException as exc:  # even an interrupt: clean up first, then raise it
            self.error = exc


def _segments(err: str) -> dict[str | int | None, str]:
    """The finish script's stderr split by its `@@phase NAME` / `@@query I` markers."""
    out: dict[str | int | None, str] = {}
    key: str | int | None = None
    for line in err.splitlines(keepends=True):
        if line.startswith("@@phase "):
            key = line.split()[1]
        elif line.startswith("@@query "):
            key = int(line.split()[1])
        else:
            out[key] = out.get(key, "") + line
    return out

"""The finish session of a restore: one script on the host from the proven files to a
validated node at the target.

Owns what runs once the data is in the side directory (`node.Node` owns the host, the
target and the session that receives the data): extract, pg_verifybackup, configure,
swap, start, promote, the archiving check, the validation queries judged on the host,
commit -- one shell script, each phase marked with the host's clock. Over SSH a session
costs round trips and the login shell's startup, so this one is opened while the data
still streams (`begin`) and waits on its stdin for `go`: nothing runs before the stream
was authenticated to its last chunk.

A finish stops when its step is cancelled (`controller.fencing`): the fence is checked
before `go`, then the script checks a cancel flag (a file the controller touches, in the
session's own command channel) before every phase and in the promote poll loop, and long
commands (pgbackrest restore, tar, pg_verifybackup, validation queries) are terminated
when it appears; the start is let finish (`pg_ctl start -w`, whose wait ends as soon as
the PID file says the server is up: killing it sooner could leave a postmaster that has
no PID file yet) and the server it started is then stopped by its PID. A
cancelled or failed finish stops the server it started and undoes the swap, so the
target is as it was (`swap`), and raises `fencing.Cancelled` or `node.RestoreFailed`.
"""

from __future__ import annotations

import base64
import itertools
import logging
import queue
import secrets
import shlex
import threading
from collections.abc import Iterator
from typing import Any

from controller import fencing
from controller.backups import swap
from controller.backups.hosts import CommandError, Result
from controller.backups.node import Node, RestoreFailed
from controller.secrets import redact

log = logging.getLogger(__name__)
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


def run(node: Node, *, fetch: list[str] | None = None, extract_tars: bool = False,
       verify: bool = False, check_only: bool = False,
       settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Bring the restored files up at the target and prove them, in ONE remote session.

    In order, each step only if the previous one succeeded: `fetch` (a restore command
    writing into `layout.side`, e.g. `pgbackrest restore`), extract tar-format files,
    `pg_verifybackup` against the manifest, configure (archiving off, port, socket,
    `settings`), swap the side directory in (`swap.SWAP`), `pg_ctl start -w` (the PID file
    read every 10 ms: pg_ctl reads it every 100 ms), poll
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
    return begin(node, fetch=fetch, extract_tars=extract_tars, verify=verify,
                 check_only=check_only, settings=settings).go()


def begin(node: Node, *, fetch: list[str] | None = None, extract_tars: bool = False,
          verify: bool = False, check_only: bool = False,
          settings: dict[str, str] | None = None) -> PendingFinish:
    """Open the finish session now; it runs nothing until `go()` (see PendingFinish)."""
    # the cancel flag: a name nobody can guess, in the login's /tmp on the host
    flag = f"/tmp/.failover-restore-{secrets.token_hex(12)}.cancel"
    script = _script(node, fetch=fetch, extract_tars=extract_tars, verify=verify,
                     check_only=check_only, settings=settings, flag=flag)
    budget = (24 * 3600 + node.opts.start_timeout + node.opts.promote_timeout
              + 330 * (len(node.opts.validation) + 2))
    return PendingFinish(node, script, budget, flag, own=not check_only)


def _script(node: Node, *, fetch: list[str] | None, extract_tars: bool,
            verify: bool, check_only: bool, settings: dict[str, str] | None,
            flag: str) -> str:
    q, j, o = shlex.quote, shlex.join, node.opts
    p, side = node.path, node.layout.side
    psql = f"watch timeout {PSQL_TIMEOUT}"  # a hung query ends; its psql exits 124
    conf = "# set by the failover controller's restore\n" + "".join(
        f"{k} = {v}\n" for k, v in node.settings(settings).items())
    append = node.as_user(["sh", "-c", f"cat >> {q(side)}/postgresql.auto.conf"])
    lines = [
        # wait for the word: nothing runs unless the caller says `go` (EOF: exit quietly)
        'read -r go how || exit 0; [ "$go" = go ] || exit 0; exec </dev/null',
        "cd / || exit 1",  # the OS user may not enter the login's home (psql warns)
        f"{node.layout.variables()}; C={q(flag)}; started=; bad=",
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
        lines += ["mark fetch", f"watch {j(node.as_user(fetch))} >&2 || fail fetch"]
    if extract_tars:
        untar = j(node.as_user(["tar", "-x", "-f"]))
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
        full = j(node.as_user([node.bin("pg_verifybackup"), "-q", side]))
        rest = j(node.as_user([node.bin("pg_verifybackup"), "-q", "--skip-checksums",
                               side]))
        lines += ["mark verify",
                  f'if [ "$how" = {PROVEN} ]; then watch {rest} >&2; '
                  f"else watch {full} >&2; fi || fail verify"]
    pg_ctl = node.as_user([node.bin("pg_ctl"), "-D", p, "-l", f"{p}/restore-start.log",
                           "-w", "-t", str(o.start_timeout), "start"])
    # one query per poll: in recovery?, then (read once it says f) the archiving
    # settings and the last replayed transaction's time
    poll_sql = ("SELECT pg_is_in_recovery(), current_setting('archive_mode'), "
                "current_setting('archive_command'), coalesce(extract(epoch FROM "
                "pg_last_xact_replay_timestamp())::text, '')")
    poll = node.as_user(node.psql_argv(poll_sql, extra=("-F", SEP)))
    if not check_only:
        lines += [
            "mark swap",
            f"printf '%s' {q(conf)} | {j(append)} >&2 || fail swap",
            'rm -f "$S/standby.signal" "$S/postmaster.pid" >&2 || fail swap',
            swap.SWAP.rstrip("\n"),
            "mark start",
            "check start; started=1",  # from here a cancel also stops the server
            # pg_ctl -w looks at the PID file every 100 ms: the script looks every 10 ms,
            # and once the file says the server is up, pg_ctl's wait is ended (pg_ctl
            # alone: the server runs in a session of its own); until then pg_ctl says
            # when the server died or missed its start timeout
            f"{j(pg_ctl)} >&2 & w=$!",
            'while kill -0 "$w" 2>/dev/null; do',
            '  case "$(sed -n 8p "$P/postmaster.pid" 2>/dev/null)" in ready*|standby*)',
            '    kill -TERM "$(inner "$w")" 2>/dev/null; wait "$w"; w=; break;; esac',
            "  sleep 0.01; done",
            '[ -z "$w" ] || wait "$w" || { tail -20 "$P/restore-start.log" >&2; fail start; }',
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
        argv = node.as_user(node.psql_argv(v.sql, database=v.database))
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


def _parse(node: Node, result: Result, *, cancel: str | None = None,
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
                f"restore onto {node.path} on {node.host.name} stopped "
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
        elif word in ("@@aside", "@@kept", "@@removing"):
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
            node.stop()
        if own:
            node.undo()
    if (failed is None and result.rc != 0) or not marks:
        raise CommandError(node.host.name, ["sh", "-c", "<restore steps>"], result)
    errors = _segments(result.err)
    if failed is not None:
        detail = redact(errors.get(failed, "").strip()[-1500:] or f"exit {result.rc}")
        if "undo" in got:
            detail += (f"; putting the target back FAILED: see {node.layout.marker} "
                       f"and {node.layout.aside}")
        if failed == "verify":
            raise RestoreFailed("verify", "pg_verifybackup rejected the restored files: "
                                f"{detail}")
        if failed == "archiving":
            mode = got.get("settings", "").split(SEP)[0]
            raise RestoreFailed("start", f"archive_mode is {mode} on the restored node; it "
                                "would archive into the source's repository")
        if failed == "validate" and not died:
            _judge(node, got["validation"], errors)  # raises, naming each failed check
        raise RestoreFailed(failed, f"on {node.host.name}: {detail}")
    mode, command, replay = [*got["settings"].split(SEP), "", ""][:3]
    # the replaced directory (also one an earlier attempt moved aside, when resumed)
    aside = got.get("aside") or got.get("removing") or got.get("kept")
    return {"phases": phases, "pid": got["pid"], "polls": got["polls"],
            "archiving": {"archive_mode": mode, "archive_command": command},
            "lastReplay": float(replay) if replay else None,
            "validation": _judge(node, got["validation"], errors),
            "replaced": None if aside is None else {"path": aside, "removal": (
                "in the background" if "removing" in got else
                "could not start: the next restore onto the target removes it")}}


def _judge(node: Node, answers: dict[int, tuple[int, float, str, str]],
           errors: dict[str | int | None, str]) -> list[dict[str, Any]]:
    """The host's verdict on each validation query, as evidence; raises RestoreFailed
    naming every failed one."""
    results: list[dict[str, Any]] = []
    for i, q in enumerate(node.opts.validation):
        rc, seconds, verdict, first = answers.get(i, (-1, 0.0, "error", ""))
        why = {"ok": "", "expect": f"expected {q.expect!r}",
               "min": f"expected at least {q.min:g}" if q.min is not None else "",
               "nan": f"expected a number >= {q.min:g}" if q.min is not None else ""
               }.get(verdict)
        if why is None:
            tail = errors.get(i, "").strip()[-800:]
            first, why = "", redact(f"on {node.host.name}: psql exited {rc}: {tail}")
        results.append({"name": q.name, "passed": verdict == "ok", "value": first[:200],
                        "detail": why, "seconds": round(seconds, 3)})
    failed = [r for r in results if not r["passed"]]
    if failed:
        raise RestoreFailed("validate", "; ".join(
            f"{r['name']}: got {r['value']!r}, {r['detail']}" for r in failed))
    return results


class PendingFinish:
    """A finish script (`begin`) already started on the host, waiting on its stdin for `go`.

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
        return _parse(self.node, self._result, cancel=cancel, own=self.own)

    def abort(self) -> None:
        self._gate.put(None)
        self._thread.join(60)


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

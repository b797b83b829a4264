"""The server side of a PostgreSQL node: what a failback does on a node's host.

Owns the commands that stop a node, rewind it, replace its data with a base backup and
start it as a standby, run on the node's host (`controller.backups.hosts`: this machine,
or over SSH with the host key pinned) as the database's OS user (`runuser -u postgres
--` when the connection is root, as the restorer does). Why a module of its own: SQL
(`controller.db.postgres`) reaches a node through its port; these reach its data
directory, and share only the node's address.

- **stop**: SIGINT (fast shutdown) to the PID in `postmaster.pid`, waiting, fenced, for
  it to exit; `pg_controldata` then gives the last checkpoint (a primary shut down
  cleanly: the shutdown checkpoint, where its WAL ends, `walEnd`). A data directory
  without `postmaster.pid` is stopped already; when it was not shut down cleanly (a
  crash), `pg_waldump` from that checkpoint finds where its WAL ends, so writes after
  the checkpoint count in a promotion's data lost. A standby's (shut down in recovery)
  is its last restartpoint, before what it replayed: its WAL end is not known.
- **rewind size**: `pg_rewind --dry-run --progress` says "need to copy N MB (total
  source directory size is M MB)": the failback's choice of method. A dry run refuses
  a node that was not shut down cleanly (a crash) without its crash recovery, so that
  recovery runs first as pg_rewind itself runs it (`postgres --single -F`, no client
  ever connects); nothing else changes.
- **rewind**: `pg_rewind --source-server`, the node stopped (pg_rewind finishes a crash
  recovery itself first, in single-user mode: the node never accepts a client). Needs
  `wal_log_hints = on` or data checksums on the node, and `full_page_writes`.
- **basebackup**: the data directory is moved aside (`DATA.<aside>`), never deleted, then
  `pg_basebackup -X stream -c fast` fills a fresh one. A retry with the aside in place
  (the first attempt moved the data, then died) removes only the new, partial copy.
- **follow**: `standby.signal`, and `primary_conninfo`, `primary_slot_name` (empty: none)
  and `default_transaction_read_only = off` appended to `postgresql.auto.conf` (the last
  setting of a name wins; both files live in the data directory wherever the
  configuration is), then **start**.
  Replication connects as the backend's user, with no password in the file: the node's
  host authenticates by `.pgpass`, a certificate or `trust`.
- **start** (also a stop fence undone): the node's `startCommand` when it names one (a
  cluster configured outside its data directory: Debian's `pg_ctlcluster 15 main
  start` reads /etc/postgresql/15/main), else `pg_ctl start -w` on the data directory,
  on the node's port (and unix-socket directory, when its host names one), waiting at
  most `start_timeout` seconds; a node that does not start in time is `StartFailed`,
  with the end of its log (`failback-start.log` in the data directory) saying why.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
import signal

from controller import fencing
from controller.backups.hosts import CommandError, Host, is_root_on
from controller.db import Node, RewindFailed, RewindSize, StartFailed, Unreachable, lsn_text
from controller.model import Evidence, PermanentError
from controller.secrets import redact

LOG = "failback-start.log"  # in the data directory: the server's log once started here
STOP_POLL = 0.1
WAL_SCAN_TIMEOUT = 10  # seconds pg_waldump may read a crashed node's WAL for its end


def conninfo(node: Node, user: str, database: str) -> str:
    """A libpq connection string for `node` (each value quoted as libpq reads it)."""
    def value(v: object) -> str:
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return (f"host={value(node.host)} port={value(node.port)} user={value(user)} "
            f"dbname={value(database)}")


class ServerHost:
    """One node's host, reached to run server commands on its data directory."""

    def __init__(self, node: Node, host: Host, *, pg_bin: str, os_user: str,
                 stop_timeout: float, start_timeout: float):
        if not node.data:
            raise PermanentError(f"node {node.describe()}: stopping, rewinding or starting "
                                 "it needs its data directory (data: "
                                 "/var/lib/postgresql/15/main)")
        self.node, self.host, self.data = node, host, node.data
        self.pg_bin, self.os_user, self.stop_timeout = pg_bin, os_user, stop_timeout
        self.start_timeout = start_timeout
        self._root: bool | None = None

    def close(self) -> None:
        self.host.close()

    def as_user(self, argv: list[str]) -> list[str]:
        if self._root is None:
            try:
                self._root = is_root_on(self.host)
            except ConnectionError as exc:
                raise Unreachable(f"{self.host.name}: {exc}") from None
        if self._root and self.os_user != "root":
            return ["runuser", "-u", self.os_user, "--", *argv]
        return argv

    def run(self, argv: list[str], *, timeout: float = 600.0, what: str) -> str:
        try:
            return self.host.run(self.as_user(argv), timeout=timeout).out
        except ConnectionError as exc:
            raise Unreachable(f"{self.host.name}: {exc}") from None
        except CommandError as exc:
            raise PermanentError(f"{self.node.describe()}: {what} failed {exc}") from None

    def pid(self) -> int | None:
        try:
            found = self.host.run(["head", "-n", "1", f"{self.data}/postmaster.pid"],
                                  timeout=30, check=False)
        except ConnectionError as exc:
            raise Unreachable(str(exc)) from None
        return int(found.out.strip()) if found.rc == 0 and found.out.strip() else None

    def stopped(self, what: str) -> None:
        if self.pid() is not None:
            raise PermanentError(f"{self.node.describe()} is running: stop it before {what}")

    # --- the calls ---------------------------------------------------------------------------

    def stop(self) -> Evidence:
        try:
            pid = self.pid()
            if pid is not None:
                fencing.check()
                self.host.run(["kill", "-s", signal.SIGINT.name, str(pid)], timeout=30,
                              check=False)
                waited = 0.0
                while self.host.run(["kill", "-0", str(pid)], timeout=30,
                                    check=False).rc == 0:
                    if waited >= self.stop_timeout:
                        raise RuntimeError(f"postmaster {pid} on {self.host.name} did not "
                                           f"exit within {self.stop_timeout:g} s")
                    fencing.pause(STOP_POLL)
                    waited += STOP_POLL
            last = self.last_lsn()
        except ConnectionError as exc:
            raise Unreachable(str(exc)) from None
        out: Evidence = {"already": pid is None, "host": self.host.name}
        if pid is not None:
            out["pid"] = pid
        return {**out, **last}

    def last_lsn(self) -> Evidence:
        """The stopped cluster's last checkpoint (`lastLsn`, from pg_controldata) and where
        its WAL ends (`walEnd`: the start of its last valid record): after a primary's
        clean shutdown, that checkpoint; after a crash, read with pg_waldump from it;
        after a standby's shutdown, not known. `lastLsnFrom` says which. Empty when
        pg_controldata cannot read it."""
        try:
            found = self.host.run([f"{self.pg_bin}/pg_controldata", "-D", self.data],
                                  timeout=60)
        except (CommandError, PermanentError):
            return {}
        control = dict(line.split(":", 1) for line in found.out.splitlines() if ":" in line)
        control = {k.strip(): v.strip() for k, v in control.items()}
        last = control.get("Latest checkpoint location")
        if last is None:
            return {}
        state = control.get("Database cluster state", "")
        if state == "shut down":
            return {"lastLsn": last, "walEnd": last,
                    "lastLsnFrom": "pg_controldata (shutdown checkpoint)"}
        if state.startswith("shut down"):  # in recovery: a restartpoint
            return {"lastLsn": last, "lastLsnFrom": f"pg_controldata (last restartpoint; "
                    f"{state})"}
        out: Evidence = {"lastLsn": last, "lastLsnFrom": "pg_controldata (last checkpoint; "
                         "not shut down cleanly)"}
        end, said = self.wal_end(last, control.get("Latest checkpoint's TimeLineID", "1"),
                                 int(control.get("Bytes per WAL segment", "16777216")))
        if end is not None:
            return {**out, "walEnd": end, "lastLsnFrom": "pg_waldump (the last valid "
                    "record in pg_wal, after the last checkpoint)"}
        return {**out, "walEndError": said}

    def wal_end(self, start: str, timeline: str, segment: int) -> tuple[str | None, str]:
        """Where the WAL in pg_wal ends, read from `start` on: the start of the last valid
        record (pg_waldump names it when the next one is not valid), or the end of the
        newest segment file when every record up to it is (a WAL switch ends there);
        else None and why. The scan stops at that file's end: pg_waldump waits 5 s for a
        segment that is not there."""
        tli = f"{int(timeline):08X}"
        names = [n for n in self.run(["ls", f"{self.data}/pg_wal"], timeout=60,
                                     what="listing pg_wal").split()
                 if re.fullmatch(tli + "[0-9A-F]{16}", n)]
        if not names:
            return None, f"no WAL segment of timeline {timeline} in pg_wal"
        newest = max(names)
        stop = lsn_text((int(newest[8:16], 16) * (1 << 32) // segment
                         + int(newest[16:], 16) + 1) * segment)
        argv = self.as_user(["timeout", str(WAL_SCAN_TIMEOUT), f"{self.pg_bin}/pg_waldump",
                             "-q", "-t", timeline, "-p", f"{self.data}/pg_wal", "-s", start,
                             "-e", stop])
        done = self.host.run(argv, timeout=WAL_SCAN_TIMEOUT + 30, check=False)
        if done.rc == 0:
            return stop, ""
        found = re.search(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+)", done.err)
        if found is not None:
            return found.group(1), ""
        if done.rc == 124:
            return None, f"pg_waldump did not finish within {WAL_SCAN_TIMEOUT} s"
        return None, f"pg_waldump exited {done.rc}: {(done.out + done.err).strip()[-300:]}"

    def _pg_rewind(self, source: str, *flags: str) -> str:
        """pg_rewind of the stopped node onto `source` (with `flags`); what it said."""
        self.stopped("rewinding it")
        argv = self.as_user([f"{self.pg_bin}/pg_rewind", "-D", self.data,
                             "--source-server", source, *flags])
        try:
            done = self.host.run(argv, timeout=3600, check=False)
        except ConnectionError as exc:
            raise Unreachable(f"{self.host.name}: {exc}") from None
        said = (done.out + done.err).strip()
        if done.rc != 0:
            raise RewindFailed(f"pg_rewind of {self.node.describe()} exited {done.rc}: "
                               f"{said[-500:]}")
        return said

    def rewind_size(self, source: str) -> RewindSize:
        try:
            said = self._pg_rewind(source, "--dry-run", "--progress")
        except RewindFailed as exc:
            if "must be shut down cleanly" not in str(exc):
                raise
            fencing.check()
            single = shlex.join([f"{self.pg_bin}/postgres", "--single", "-F", "-D", self.data,
                                 "template1"])
            # single-user mode reads commands until its input ends: over SSH the input is
            # the session's channel, which never ends, so it gets none at all
            self.run(["sh", "-c", f"exec {single} < /dev/null"], timeout=3600,
                     what="crash recovery (postgres --single)")
            said = self._pg_rewind(source, "--dry-run", "--progress")
        if "no rewind required" in said:
            return RewindSize(0, 0)
        found = re.search(r"need to copy (\d+) MB \(total source directory size is (\d+) "
                          r"MB\)", said)
        if found is None:
            raise RewindFailed(f"pg_rewind --dry-run of {self.node.describe()} did not say "
                               f"how much it would copy: {said[-300:]}")
        return RewindSize(int(found.group(1)), int(found.group(2)))

    def rewind(self, source: str) -> Evidence:
        fencing.check()
        return {"rewound": "no rewind required" not in self._pg_rewind(source)}

    def basebackup(self, source: str, aside: str) -> Evidence:
        self.stopped("replacing its data")
        moved = f"{posixpath.normpath(self.data)}.{aside}"
        data, kept = shlex.quote(self.data), shlex.quote(moved)
        backup = shlex.join([f"{self.pg_bin}/pg_basebackup", "-D", self.data, "-X", "stream",
                             "-c", "fast", "-d", source])
        script = (f"if [ -e {data} ]; then if [ -e {kept} ]; then rm -rf {data}; "
                  f"else mv {data} {kept}; fi; fi; exec {backup}")
        fencing.check()
        self.run(["sh", "-c", script], timeout=3600, what="pg_basebackup")
        return {"aside": moved}

    def follow(self, source: str, slot: str | None) -> Evidence:
        self.stopped("starting it as a standby")
        confs = [f"primary_conninfo = '{source.replace(chr(39), chr(39) * 2)}'",
                 f"primary_slot_name = '{slot or ''}'", "default_transaction_read_only = off"]
        d = shlex.quote(self.data)
        script = (f"touch {d}/standby.signal && printf '%s\\n' "
                  f"{' '.join(shlex.quote(c) for c in confs)} >> {d}/postgresql.auto.conf")
        fencing.check()
        self.run(["sh", "-c", script], timeout=60, what="writing standby.signal")
        return self.start()

    def start(self) -> Evidence:
        """The node's `startCommand`, else `pg_ctl start -w` on the node's port (and socket
        directory); `already` when it runs."""
        if self.pid() is not None:
            return {"already": True}
        wait = self.start_timeout
        if self.node.start_command:
            argv = self.node.start_command
        else:
            opts = f"-p {self.node.port}"
            if self.node.host.startswith("/"):
                opts += f" -k {self.node.host}"
            argv = [f"{self.pg_bin}/pg_ctl", "-D", self.data, "-l", f"{self.data}/{LOG}",
                    "-w", "-t", f"{math.ceil(wait)}", "-o", opts, "start"]
        fencing.check()
        try:
            self.host.run(self.as_user(argv), timeout=wait + 30)
        except ConnectionError as exc:
            raise Unreachable(f"{self.host.name}: {exc}") from None
        except CommandError as exc:
            log = self.host.run(["tail", "-n", "5", f"{self.data}/{LOG}"], timeout=30,
                                check=False).out.strip()
            what = "pg_ctl start" if argv[0].endswith("pg_ctl") else argv[0]
            raise StartFailed(f"{self.node.describe()}: {what} failed or did not start "
                              f"within {wait:g} s {exc}; its log ends: "
                              f"{redact(log[-500:]) or '-'}") from None
        return {"already": False}


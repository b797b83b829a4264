"""Restorers: put a verified backup onto a database host, start it, prove it, time it.

Owns the restore step's two implementations of the `Restorer` protocol:
- `BaseBackupRestorer` streams a catalog payload (an encrypted tar of a `pg_basebackup`
  plain/tar backup) from its store, decrypting and authenticating chunk by chunk (for a
  local target in a thread of its own, a few chunks ahead, so that this work overlaps the
  host's; over SSH between packets, see `Host.read_ahead`), into
  `tar -x` on the target (locally, or over SSH with fabric, host key pinned; the
  target directory is checked and created in the same session), then, for a test
  restore or a backup whose verification ran none, `pg_verifybackup` (the session for
  these later steps is opened while the data streams, and waits: nothing runs before the
  stream was authenticated to its last chunk and its stored SHA-256 matched the
  catalog's: proven by the payload's seal over every chunk's tag, or hashed for an entry
  written without one, see `crypto`). A verified backup's verification ran
  `pg_verifybackup`, checksums included, on these very bytes (the stored SHA-256 says
  so), so its restore does not run it again: tar's exit status says every file was
  written. A test restore hashes each file on the
  way against the manifest (`manifest`): when that proved them all, `pg_verifybackup`
  skips its checksum pass;
- `PgBackRestRestorer` runs `pgbackrest restore` on the target (in the finish session,
  opened while the target is prepared in another), with `--archive-mode=off`:
  a continuous (WAL-archived) set replays the archive to its end by default (`--type=
  default`: the newest archived transaction, the seconds-level RPO it was chosen for), any
  other set stops at the end of its base backup (`--type=immediate`); `recoveryTarget`
  names `latest`, `immediate` or a time instead. A file of the set damaged or missing in
  the repository fails it with `DamagedSet` (a `DamagedBackup`, naming the file), so
  the restore step falls back to the next verified backup.
Both restore beside the target and swap it in (see `swap`): the target's old data is kept
until the restored node started there and passed validation, and any failure (a payload
damaged since its verification, a cut stream, a failed start or check, a cancel) leaves
the target as it was. A retried restore recognises its own unfinished work (undone, then
restored again: evidence `resumed`) or its own finished one (a running node for the same
backup that passes validation: `alreadyRestored`, nothing restored twice).
Both switch the node's archiving off, start it, wait for promotion, run the plan's
validation queries and return JSON evidence: which backup, each phase's duration, bytes
and throughput, RPO against the budget -- the data is as of the last replayed transaction
(`pg_last_xact_replay_timestamp()`, or the backup's takenAt when none is newer), measured
against `faultAt` or else the restore's start -- validation results, what was replaced,
and who triggered it. Only a backup whose verification passed is accepted; a wrong key
or a tampered payload fails before or during the stream, and nothing counts as restored.
Progress is logged every 64 MiB.

Inside a step, a restore stops when the step is cancelled (`controller.fencing`: its
timeout passed or the lease was lost): the fence is checked before anything is touched,
before every 256 KiB slice of the stream, before PostgreSQL is started and while the finish
session runs (see `finish`). It then cleans up as a failed restore does (a server it
started is stopped, the target put back as it was), and raises `fencing.Cancelled`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import queue
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from controller import fencing
from controller.backups import DamagedBackup, Restorer, finish, swap
from controller.backups.catalog import READ_CHUNK, AuditSink, CatalogStore
from controller.backups.finish import PendingFinish
from controller.backups.hosts import Host, LocalHost, SshHost, SshOptions, runs_as_root
from controller.backups.manifest import StreamedFiles
from controller.backups.naming import iso
from controller.backups.node import Node, RestoreFailed, TargetOptions
from controller.model import Backup, Evidence, PermanentError, Target
from controller.secrets import Secrets, redact

log = logging.getLogger(__name__)
PROGRESS_EVERY = 64 << 20
# the stream goes to the host in slices, the step's fence checked before each: a slice is
# what may still be sent after a cancel (a write to SSH waits on the remote's window)
STREAM_SLICE = 256 << 10
# GNU tar reads the stream in 1 MiB records (-b 2048), whole ones even from a pipe (-B);
# its default 10 KiB records cost a read and a wakeup per 10 KiB of the stream
UNTAR_STREAM = ("tar", "-x", "-b", "2048", "-B", "-f", "-")
AHEAD = 8  # chunks (of READ_CHUNK) decrypted ahead of the host


class StoreSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal["s3", "filesystem"]
    options: dict[str, Any] = Field(default_factory=dict)


def build_store(spec: StoreSpec, *, secrets: Secrets, audit: AuditSink | None) -> CatalogStore:
    from controller import registry

    store: CatalogStore = registry.build("store", spec.kind, spec.options, secrets=secrets,
                                         audit=audit)
    return store


class RestorerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ssh: SshOptions | None = Field(None, description="needed when a target names a host")
    actor: str = Field("controller", description="who is recorded as triggering restores")


class BaseBackupRestorerOptions(RestorerOptions):
    store: StoreSpec


class PgBackRestRestorerOptions(RestorerOptions):
    config: str = Field(description="pgbackrest.conf on the target host")
    stanza: str
    pgbackrest: str = "pgbackrest"


class _Restorer(Restorer):
    """Shared flow: host, node, timings, audit, evidence."""

    format = ""

    def __init__(self, options: RestorerOptions, *, secrets: Secrets | None = None,
                 audit: AuditSink | None = None):
        self.options = options
        self.secrets = secrets or Secrets()
        self._audit = audit

    def host(self, into: Target, opts: TargetOptions) -> Host:
        if into.host in (None, "", "localhost", "local"):
            return LocalHost()
        if self.options.ssh is None:
            raise PermanentError(f"target host {into.host!r} needs `ssh:` options "
                                 "(user, privateKey, knownHosts) on the restorer")
        return SshHost(into.host, self.options.ssh, secrets=self.secrets, port=opts.ssh_port)

    def audit(self, actor: str, detail: str) -> None:
        log.info("restore by %s: %s", actor, redact(detail))
        if self._audit is not None:
            try:
                self._audit(at=time.time(), actor=actor, action="restore",
                            detail=redact(detail))
            except Exception:
                log.exception("could not write the restore audit record")

    def restore(self, *, backup: Backup, into: Target) -> Evidence:
        return self._restore(backup, into, test=False)

    def test_restore(self, *, backup: Backup, into: Target) -> Evidence:
        """Restore a not-yet-verified backup into a scratch target (for verification)."""
        return self._restore(backup, into, test=True)

    def _restore(self, backup: Backup, into: Target, *, test: bool) -> Evidence:
        fencing.check()
        opts = TargetOptions.model_validate(into.options)
        actor = opts.actor or self.options.actor
        if not test and backup.verified is not True:
            raise PermanentError(f"backup {backup.id} is not verified "
                                 f"({backup.verification or 'never verified'}); only a "
                                 "backup whose verification passed may be restored")
        if backup.meta.get("format", self.format) != self.format:
            raise PermanentError(f"backup {backup.id} has format {backup.meta.get('format')!r};"
                                 f" this restorer restores {self.format!r} backups")
        where = f"{into.host or 'localhost'}:{into.path}" + (" (test restore)" if test else "")
        self.audit(actor, f"started restoring {backup.id} onto {where}")
        started_wall, started = time.time(), time.monotonic()
        phases: dict[str, float] = {}
        host = self.host(into, opts)
        fence = fencing.current()
        try:
            # the login says whether commands run as root; the first session confirms it
            node = Node(host, into.path, opts, root=runs_as_root(host), backup=backup.id,
                        run=fence.label if fence is not None else "")
            try:
                evidence = self._run(backup, node, phases, test=test)
            except swap.AlreadyThere as there:
                evidence = self._resume(backup, node, there.state, phases, test=test)
        except Exception as exc:
            what = "CANCELLED" if isinstance(exc, fencing.Cancelled) else "FAILED"
            self.audit(actor, f"{what} restoring {backup.id} onto {where}: {exc}")
            raise
        finally:
            host.close()
        # the data is at least as new as the backup; a replayed transaction says how much newer
        replay = evidence.pop("lastReplay", None)
        data_as_of = max(backup.taken_at, replay or 0.0)
        rpo = (started_wall if opts.fault_at is None else opts.fault_at) - data_as_of
        if node.cleared and "resumed" not in evidence:
            evidence["resumed"] = (f"undid an unfinished restore ({node.cleared}) and "
                                   "restored again")
        evidence.update({
            "backup": backup.id, "dataset": backup.dataset, "kind": backup.kind,
            "format": self.format, "location": backup.location,
            "host": into.host or "localhost", "path": into.path, "port": opts.port,
            "dataAsOf": iso(data_as_of), "rpoSeconds": round(rpo, 3),
            "dataAsOfSource": "last replayed transaction" if (replay or 0.0) > backup.taken_at
            else "backup's takenAt (no later transaction replayed)",
            "rpoFrom": "faultAt" if opts.fault_at is not None else "restore start",
            "alreadyRestored": evidence.get("alreadyRestored", False),
            "resumed": evidence.get("resumed"),
            "rpoBudgetSeconds": opts.rpo,
            "rpoMet": None if opts.rpo is None else rpo <= opts.rpo,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "seconds": round(time.monotonic() - started, 3), "triggeredBy": actor,
        })
        self.audit(actor, f"restored {backup.id} onto {where} in {evidence['seconds']} s, "
                          f"data age {rpo:.0f} s, {len(evidence['validation'])} validation "
                          "queries passed")
        return evidence

    def _timed(self, phases: dict[str, float], name: str, fn: Any, *args: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            phases[name] = time.monotonic() - t

    def _finish(self, node: Node, phases: dict[str, float], ev: Evidence, *,
                pending: PendingFinish | None = None, check_only: bool = False,
                checksums_proven: bool = False) -> Evidence:
        """The rest of the restore in one remote session: `pending` (opened by `_beside`),
        or with `check_only` a new one that checks a node already running (`finish.run`)."""
        if pending is not None:
            done = pending.go(checksums_proven=checksums_proven)
        else:
            done = finish.run(node, check_only=check_only)
        phases.update(done["phases"])
        if done["archiving"]["archive_mode"] != "off":  # the script refuses this too
            raise RestoreFailed("start", f"archive_mode is {done['archiving']['archive_mode']}"
                                " on the restored node; it would archive into the source's "
                                "repository")
        ev.update({"archiving": done["archiving"], "validation": done["validation"],
                   "pid": done["pid"], "promotePolls": done["polls"],
                   "lastReplay": done["lastReplay"], "replaced": done["replaced"]})
        return ev

    def _run(self, backup: Backup, node: Node, phases: dict[str, float], *,
             test: bool) -> Evidence:
        raise NotImplementedError

    def _resume(self, backup: Backup, node: Node, state: swap.State,
                phases: dict[str, float], *, test: bool) -> Evidence:
        """A node of ours for `backup` runs at the target: an earlier attempt restored it
        (`done`: finished but not recorded; `swapped`: it died before its commit). It
        counts once it passes validation now; one that died before its commit and fails
        is stopped, undone and restored again; a finished one that fails is refused."""
        try:
            ev = self._finish(node, phases, {"alreadyRestored": True}, check_only=True)
        except RestoreFailed as exc:
            if state is not swap.State.SWAPPED:
                raise PermanentError(
                    f"backup {backup.id} was restored onto {node.path} on {node.host.name} "
                    f"earlier ({node.layout.marker} says so) and its server runs, but it "
                    f"no longer passes: {exc}; stop it and restore with `overwrite: true`"
                ) from exc
            fencing.check()
            node.stop()
            node.undo()
            ev = self._run(backup, node, phases, test=test)
            ev["resumed"] = (f"an unfinished restore of {backup.id} failed its checks "
                             f"({exc}); undone and restored again")
        return ev

    def stop(self, *, into: Target) -> None:
        """Stop the server a restore started on `into` (by its PID)."""
        opts = TargetOptions.model_validate(into.options)
        host = self.host(into, opts)
        try:
            Node(host, into.path, opts).stop()
        finally:
            host.close()


class BaseBackupRestorer(_Restorer):
    """Restores catalog payloads made from `pg_basebackup` (plain or tar format)."""

    Options = BaseBackupRestorerOptions
    options: BaseBackupRestorerOptions
    format = "basebackup"

    def __init__(self, options: BaseBackupRestorerOptions, *, secrets: Secrets | None = None,
                 audit: AuditSink | None = None, store: CatalogStore | None = None):
        super().__init__(options, secrets=secrets, audit=audit)
        self.store = store or build_store(options.store, secrets=self.secrets, audit=audit)

    def _run(self, backup: Backup, node: Node, phases: dict[str, float], *,
             test: bool) -> Evidence:
        moved = {"bytes": 0}
        # a restore of a verified backup streams the very bytes its verification proved
        # with pg_verifybackup, file by file (the stored SHA-256 is checked as cataloged
        # before the last chunk): hashing each file or running pg_verifybackup again would
        # prove nothing new (tar's exit status says it wrote them all); a test restore,
        # or a backup whose verification ran no pg_verifybackup, proves them here
        earlier = None if test else _files_proven(backup)
        files = StreamedFiles()  # each file's SHA-256, checked against the manifest
        with self.store.open_payload(backup) as reader, _reading(
                reader, files.feed if earlier is None else None, node.host) as ahead:
            chunks = _progress(ahead, backup.id, moved, backup.meta.get("plainSize"))
            try:
                first = next(chunks)  # a wrong key fails here, before anything is written
            except StopIteration:
                raise RestoreFailed("fetch", f"backup {backup.id} payload is empty") from None
            t = time.monotonic()
            # the finish session opens beside the transfer (a tar-format backup is
            # extracted there: PG15 cannot verify tar format)
            pending = _beside(node, lambda: finish.begin(
                node, extract_tars=True, verify=earlier is None), lambda: node.receive(
                [*UNTAR_STREAM, "-C", node.layout.side], _prepend(first, chunks)))
        seconds = phases["fetch"] = time.monotonic() - t
        if earlier is not None:
            proven, checksums, verified = True, earlier, f"passed at verification: {earlier}"
        else:
            verdict = files.verdict()
            proven = verdict.proven and ahead.inspect_error is None
            checksums = verdict.detail if proven else f"by pg_verifybackup: {verdict.detail}"
            verified = "passed"
        ev: Evidence = {"bytes": moved["bytes"],
                        "mbPerSecond": round(moved["bytes"] / 1e6 / seconds, 1) if seconds
                        else None, "pgVerifybackup": verified, "checksums": checksums}
        return self._finish(node, phases, ev, pending=pending, checksums_proven=proven)


def _beside(node: Node, begin: Callable[[], PendingFinish], work: Callable[[], object]
            ) -> PendingFinish:
    """Open the finish session (`begin`: it waits for `go`) and run `work` in another
    session meanwhile, on one connection: over SSH the finish session's startup (a
    channel, the login shell) overlaps `work` instead of following it. If `work` fails,
    the finish session ends having run nothing; if `work` found the login is not who its
    name said (root or not), the script is built again."""
    root = node.root
    node.host.open()  # one connection (attempt) serves both sessions
    pending = begin()
    try:
        work()
    except BaseException:
        pending.abort()
        raise
    if node.root != root:
        pending.abort()
        pending = begin()
    return pending


def _files_proven(backup: Backup) -> str | None:
    """What proved every file of `backup` against its manifest when it was verified (its
    latest verification passed `pg_verifybackup`: checksums, or the same SHA-256s taken as
    it streamed); None when nothing did."""
    last = backup.meta.get("lastVerification")
    if backup.verified is not True or not isinstance(last, dict) or last.get("passed") is not True:
        return None
    checks = last.get("checks")
    if not isinstance(checks, list) or not any(
            isinstance(c, dict) and c.get("name") == "pg_verifybackup"
            and c.get("passed") is True for c in checks):
        return None
    at = last.get("at")
    when = iso(at) if isinstance(at, int | float) else "an unrecorded time"
    return (f"every file against backup_manifest by its verification at {when}; these are "
            "its bytes (stored SHA-256 as cataloged, every chunk authenticated)")


class DamagedSet(RestoreFailed, DamagedBackup):
    """`pgbackrest restore` found a file of the set damaged or missing in the repository
    (its checksum, its format, its decryption, or the file itself): the set cannot be
    restored as it is stored, so the restore step falls back to the next verified
    backup. The target was left as it was (the restore wrote beside it)."""

    def __init__(self, backup: str, file: str, error: str):
        self.file = file
        super().__init__("fetch", f"backup {backup}: {file} is damaged in the pgBackRest "
                                  f"repository ({error}); it is not restored (restore "
                                  "another backup, and repair or expire this set)")


class PgBackRestRestorer(_Restorer):
    """Restores a cataloged pgBackRest set with `pgbackrest restore` on the target host."""

    Options = PgBackRestRestorerOptions
    options: PgBackRestRestorerOptions
    format = "pgbackrest"

    def _run(self, backup: Backup, node: Node, phases: dict[str, float], *,
             test: bool) -> Evidence:
        label = (backup.meta.get("pgbackrest") or {}).get("label")
        if not label:
            raise PermanentError(f"backup {backup.id} has no pgBackRest set label")
        # a continuous set replays the archive to its end: its point is the seconds-level RPO
        target = node.opts.recovery_target or ("latest" if backup.kind == "continuous"
                                               else "immediate")
        common = [self.options.pgbackrest, f"--config={self.options.config}",
                  f"--stanza={self.options.stanza}"]
        argv = [*common, f"--pg1-path={node.layout.side}", "--archive-mode=off",
                "--log-level-console=warn"]
        if target == "immediate":
            argv += [f"--set={label}", "--type=immediate", "--target-action=promote"]
        elif target == "latest":
            argv += [f"--set={label}", "--type=default"]
        else:
            argv += ["--type=time", f"--target={_pgbackrest_time(target)}",
                     "--target-action=promote"]
        # pgBackRest's restore_command names the directory it restored into (the side
        # one); the node recovers at the target, so the command must name that
        fetch_wal = shlex.join([*common, f"--pg1-path={node.path}", "archive-get"])
        restore_command = f'{fetch_wal} %f "%p"'.replace("'", "''")
        pending = _beside(node, lambda: finish.begin(
            node, fetch=[*argv, "restore"],
            settings={"restore_command": f"'{restore_command}'"}),
            lambda: self._timed(phases, "prepare", node.prepare))
        try:
            return self._finish(node, phases, {"set": label, "recoveryTarget": target},
                                pending=pending)
        except RestoreFailed as exc:
            if exc.phase != "fetch":
                raise
            # a time target lets pgBackRest pick the set
            damage = _set_damage(str(exc), stanza=self.options.stanza, side=node.layout.side,
                                 label=label if target in ("immediate", "latest") else None)
            if damage is None:
                raise
            raise DamagedSet(backup.id, *damage) from exc


# pgBackRest's error codes (2.45, src/build/error/error.yaml) for a file it read from the
# repository that is not as the set's manifest says
_DAMAGE = {26: "ChecksumError", 29: "FormatError", 55: "FileMissingError", 95: "CryptoError"}
_PGBACKREST_ERROR = re.compile(r"ERROR: \[(\d{3})\]: (.*)")


def _set_damage(output: str, *, stanza: str, side: str, label: str | None
                ) -> tuple[str, str] | None:
    """(the file, the error) when `pgbackrest restore`'s error says a file of a backup set
    is damaged in the repository (`label`: the set restored); None for any other failure.
    A file counts only when it lies in a set's directory (`backup/STANZA/LABEL/`) or is a
    file being restored from one: the same codes for pgbackrest.conf, a lock or an info
    file (a wrong cipher pass fails on backup.info first) are configuration, and would
    fail every set alike."""
    found = _PGBACKREST_ERROR.search(output)
    if found is None or int(found.group(1)) not in _DAMAGE:
        return None
    line = found.group(2).strip()
    error = f"{_DAMAGE[int(found.group(1))]} [{found.group(1)}]: {line}"
    for path in re.findall(r"'([^']+)'", line):
        in_set = re.search(rf"/backup/{re.escape(stanza)}/([^/]+)/(.+)$", path)
        if in_set is not None:
            return f"{in_set.group(2)} of set {in_set.group(1)}", error
        if path.startswith(f"{side}/"):
            return (f"pg_data/{path[len(side) + 1:]} of "
                    + (f"set {label}" if label else "the set restored")), error
    return None


def _pgbackrest_time(value: str) -> str:
    """An ISO 8601 time with its zone, in the form pgBackRest takes (milliseconds, UTC)."""
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise PermanentError(f"recoveryTarget {value!r} is not `immediate`, `latest` or an "
                             "ISO 8601 time with its zone (e.g. 2026-12-05T04:50:38+00:00)")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"


def _reading(reader: Any, inspect: Callable[[bytes], None] | None, host: Host
             ) -> contextlib.AbstractContextManager[Any]:
    """`reader` read in threads of its own (`_ReadAhead`) when `inspect` needs one or
    `host` is fed faster that way (`Host.read_ahead`); else `reader` itself, read (and
    decrypted) by the thread that feeds the host."""
    if inspect is None and not host.read_ahead:
        return contextlib.nullcontext(reader)
    return _ReadAhead(reader, inspect)


class _ReadAhead:
    """`reader` read (decrypted and authenticated) in a thread of its own, up to `AHEAD`
    chunks ahead of the host, and each chunk shown to `inspect`, in order, in a third
    thread: the controller's work on the stream overlaps the host's `tar`. An error
    reading is raised to the caller in place of the chunk it was reading, so nothing after
    a bad chunk is released. Leaving the context normally waits until `inspect` saw every
    chunk; leaving it on an error stops both threads. Without `inspect`, no third thread."""

    def __init__(self, reader: Any, inspect: Callable[[bytes], None] | None):
        self._out: queue.Queue[bytes | BaseException] = queue.Queue(AHEAD)
        self._seen: queue.Queue[bytes | None] | None = (
            None if inspect is None else queue.Queue(AHEAD))
        self._stop = threading.Event()
        self._done = False
        self.inspect_error: Exception | None = None  # `inspect` failed: it saw not all
        self._threads = [threading.Thread(target=self._read, args=(reader,), daemon=True,
                                          name="restore-read-ahead")]
        if inspect is not None:
            self._threads.append(threading.Thread(target=self._inspect, args=(inspect,),
                                                  daemon=True, name="restore-inspect"))

    def __enter__(self) -> _ReadAhead:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        if failed is not None:
            self._stop.set()
        for thread in self._threads:
            thread.join()

    def _read(self, reader: Any) -> None:
        try:
            while not self._stop.is_set():
                chunk = reader.read(READ_CHUNK)
                if self._seen is not None:
                    self._put(self._seen, chunk)
                self._put(self._out, chunk)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the reader in place of the chunk
            if self._seen is not None:
                self._put(self._seen, None)
            self._put(self._out, exc)

    def _inspect(self, inspect: Callable[[bytes], None]) -> None:
        assert self._seen is not None
        while not self._stop.is_set():
            try:
                chunk = self._seen.get(timeout=0.1)
            except queue.Empty:
                continue
            if not chunk:
                return
            if self.inspect_error is None:
                try:
                    inspect(chunk)
                except Exception as exc:  # no proof, but the stream goes on
                    log.exception("inspecting the restore stream failed")
                    self.inspect_error = exc

    def _put(self, to: queue.Queue[Any], item: object) -> None:
        while not self._stop.is_set():
            try:
                to.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, _size: int = READ_CHUNK) -> bytes:
        if self._done:
            return b""
        item = self._out.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = not item
        return item


def _progress(reader: Any, name: str, moved: dict[str, int], total: int | None
              ) -> Iterator[memoryview]:
    next_report = PROGRESS_EVERY
    started = time.monotonic()
    while True:
        chunk = reader.read(READ_CHUNK)
        if not chunk:
            return
        moved["bytes"] += len(chunk)
        if moved["bytes"] >= next_report:
            next_report += PROGRESS_EVERY
            rate = moved["bytes"] / 1e6 / max(time.monotonic() - started, 1e-6)
            share = f" of {total}" if total else ""
            log.info("restoring %s: %d%s bytes, %.0f MB/s", name, moved["bytes"], share, rate)
        with memoryview(chunk) as view:  # slices of it, not copies
            for at in range(0, len(chunk), STREAM_SLICE):
                fencing.check()  # a cancelled step stops the stream here, within one slice
                yield view[at:at + STREAM_SLICE]


def _prepend(first: memoryview, rest: Iterator[memoryview]) -> Iterator[memoryview]:
    yield first
    yield from rest

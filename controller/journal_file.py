"""The journal's SQLite file: opening it, checking it, its schema and what its failures say.

Owns everything `controller.journal.Journal` does to the file rather than to the records
in it: WAL mode with `synchronous=FULL`, each write its own short transaction (`_tx`), so a
committed row is on disk before the next step starts; a file that cannot be used is
reported (`JournalError`, saying what to do), never silently replaced. Why each further
rule:

- **The schema is versioned** (`meta.schema`) and an older journal is migrated forward
  in one transaction when opened (`_MIGRATIONS`), so a crash mid-way leaves the old
  version intact; a newer journal is refused. Version 1 was released twice (without, and
  later with, `plan_state.readiness`); its migration handles both. Columns are added at
  the end with a default and every INSERT names its columns, so a controller of the
  previous version still running on the same file keeps working.
- **Opening stays fast however large the journal grows**: the full `PRAGMA quick_check`
  (2.2 s at 230 MiB) runs only when the journal was not closed cleanly — the first
  process to open it finds no clean close recorded (a crash, a power cut, a file from an
  older version), which is when damage is likely. Every `Journal` holds `<file>-open`
  shared (flock) while open, so the first opener and the last closer know they are. A
  journal damaged later is still reported: a corrupt page read or written at any time
  raises JournalError saying to move it aside; `check()` runs the full check on demand.
- **Durable where it matters**: a run, a step, a request, an approval, an audit row, a
  phase or a lease taken from another holder is on disk when its transaction commits;
  an observation a fresh probe rebuilds (`_tx(durable=False)`) is committed without
  waiting for the disk, so a thousand quiet plans cost no fsync per sample.
- **A read a cycle repeats is remembered** (`_cached`: a plan's state row and its
  active run, read ~20 times per reconcile of a new plan, a third of the journal's CPU
  at 1,000 plans): until a write of this journal that may change it commits (a write
  names what it changes, `_changes`; one that names nothing forgets everything) or
  another connection commits anything (`PRAGMA data_version`). Rows are kept, never
  the objects built from them, so no caller can change what the next one reads; a read
  and a commit hold the same lock, so a read never keeps what a commit replaced.
- **A full disk says so** ("disk full", what is free, what to do) instead of SQLite's
  follow-on "cannot rollback - no transaction is active"; the change is not recorded,
  nothing recorded before is lost, and the next write succeeds once there is room.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, plan TEXT NOT NULL, kind TEXT NOT NULL, phase TEXT NOT NULL,
  level INTEGER, reason TEXT NOT NULL, requested_by TEXT NOT NULL,
  detected_at REAL NOT NULL, started_at REAL NOT NULL, finished_at REAL,
  approved INTEGER NOT NULL DEFAULT 0, outcome TEXT, steps_json TEXT NOT NULL,
  archived_at REAL, origin TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_plan ON runs(plan, started_at);
CREATE TABLE IF NOT EXISTS steps (
  run_id TEXT NOT NULL REFERENCES runs(id), idx INTEGER NOT NULL, name TEXT NOT NULL,
  action TEXT NOT NULL, status TEXT NOT NULL, target_s REAL, started_at REAL,
  finished_at REAL, elapsed_s REAL, since_detection_s REAL, met INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0, evidence TEXT NOT NULL DEFAULT '{}', error TEXT,
  approved_by TEXT, PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, at REAL NOT NULL,
  action TEXT NOT NULL, level INTEGER, sentence TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plan_state (
  plan TEXT PRIMARY KEY, phase TEXT NOT NULL, level INTEGER, active_site TEXT,
  last_decision TEXT, policy TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL,
  readiness TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, kind TEXT NOT NULL,
  actor TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL, level INTEGER, run_id TEXT
);
CREATE TABLE IF NOT EXISTS approvals (
  run_id TEXT NOT NULL, step TEXT NOT NULL, actor TEXT NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (run_id, step, actor)
);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, plan TEXT, run_id TEXT, detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS leases (
  name TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, expires_at REAL NOT NULL
);
""" + """
CREATE TABLE IF NOT EXISTS samples (
  id INTEGER PRIMARY KEY AUTOINCREMENT, plan TEXT NOT NULL, at REAL NOT NULL,
  service TEXT NOT NULL, ok INTEGER NOT NULL, latency REAL, value REAL,
  UNIQUE (plan, service, at)
);
CREATE INDEX IF NOT EXISTS samples_plan ON samples(plan, at);
""" + """
CREATE INDEX IF NOT EXISTS runs_open ON runs(plan, finished_at, started_at);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(plan, kind, finished_at);
CREATE INDEX IF NOT EXISTS decisions_plan ON decisions(plan, id);
CREATE INDEX IF NOT EXISTS requests_plan ON requests(plan, run_id);
CREATE INDEX IF NOT EXISTS requests_run ON requests(run_id);
CREATE INDEX IF NOT EXISTS audit_run ON audit(run_id);
CREATE INDEX IF NOT EXISTS audit_plan ON audit(plan, id);
"""
_V2_INDEXES = _SCHEMA[_SCHEMA.index("CREATE INDEX IF NOT EXISTS runs_open"):]
_V4_SAMPLES = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS samples"):
                      _SCHEMA.index("CREATE INDEX IF NOT EXISTS runs_open")]


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _migrate_1(db: sqlite3.Connection) -> None:
    """1 -> 2: `plan_state.readiness` (missing in the first release of version 1, which
    the second release added without a new version), `runs.archived_at` for `prune`, and
    the indexes every tick's queries need."""
    if "readiness" not in _columns(db, "plan_state"):
        db.execute("ALTER TABLE plan_state ADD COLUMN readiness TEXT NOT NULL DEFAULT '{}'")
    if "archived_at" not in _columns(db, "runs"):
        db.execute("ALTER TABLE runs ADD COLUMN archived_at REAL")
    for statement in _statements(_V2_INDEXES):
        db.execute(statement)


def _migrate_2(db: sqlite3.Connection) -> None:
    """2 -> 3: `runs.origin`, what started a run (`model.Trigger`). Runs recorded before
    it was kept: a run requested by "controller" came from the policy (a trip, or a clear
    for a failback), any other from a person's request."""
    if "origin" not in _columns(db, "runs"):
        db.execute("ALTER TABLE runs ADD COLUMN origin TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE runs SET origin = CASE WHEN requested_by <> 'controller' THEN 'request' "
               "WHEN kind = 'failback' THEN 'clear' ELSE 'trip' END WHERE origin = ''")


def _migrate_3(db: sqlite3.Connection) -> None:
    """3 -> 4: `samples`, the probe samples each plan decided on during incidents
    (`controller.sample_log`), so a real incident can be exported as a trace."""
    for statement in _statements(_V4_SAMPLES):
        db.execute(statement)


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1, 2: _migrate_2, 3: _migrate_3}
"""version -> the migration to version + 1; each runs inside the opening transaction."""

_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_UNWRITABLE = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}


class JournalError(Exception):
    """The journal file is missing, unreadable, corrupt or cannot be written (a full disk);
    the message says what to do."""


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class JournalFile:
    """The journal's SQLite file: opened durably, checked after an unclean close, created
    or migrated, closed cleanly; every statement's failure turned into what to do."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._open_fd: int | None = None
        self._rows: dict[tuple[str, str], list[sqlite3.Row]] = {}  # `_cached`
        self._rows_seen: int | None = None  # the data_version they were read at
        self._changing: set[tuple[str, str]] | None = None  # what the open `_tx` changes
        # PRAGMA synchronous: as opened (None until the first write reads it) and as now
        self._durable_level: int | None = None
        self._level = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            first = self._hold_open()
            try:
                self._prepare(first=first)
            finally:
                if first:  # let the others in (they waited while this one checked/migrated)
                    fcntl.flock(self._open_fd, fcntl.LOCK_SH)  # type: ignore[arg-type]
        except (sqlite3.DatabaseError, OSError) as exc:
            if hasattr(self, "_db"):
                self._db.close()
            self._release_open()
            if self._is_full(exc):
                raise self._full("it could not be opened") from None
            raise JournalError(
                f"journal {self.path} cannot be used ({exc}). It was left untouched: move it "
                "aside (keep it for the incident record) or point --journal at another file."
            ) from None

    # --- opening: clean close, integrity, schema --------------------------------------------

    def _hold_open(self) -> bool:
        """Hold `<journal>-open` while open: exclusively (True) when no other Journal has
        the file open, then shared. The descriptor closes with this object at the latest."""
        fd = os.open(f"{self.path}-open", os.O_RDWR | os.O_CREAT, 0o600)
        self._open_fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a first opener checks or migrates
            return False

    def _release_open(self) -> None:
        if self._open_fd is not None:
            self._finalizer()  # closes the descriptor, which releases the lock
            self._open_fd = None

    def _prepare(self, *, first: bool) -> None:
        """Check (after an unclean close), create or migrate, all before the first use."""
        db = self._db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not first and "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and row[0] == str(SCHEMA_VERSION):
                return  # open elsewhere, so checked, and current: nothing to write
        if first and tables:
            closed = None
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE key='closed'").fetchone()
                closed = row[0] if row else None
            if closed != "clean":  # a crash, a power cut, or a file from an older version
                self._quick_check()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._create_or_migrate(db)
            if first:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('closed', 'no')")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _quick_check(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)

    def _create_or_migrate(self, db: sqlite3.Connection) -> None:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables.discard("sqlite_sequence")
        if not tables:
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)",
                       (str(SCHEMA_VERSION),))
            return
        if "meta" not in tables or "runs" not in tables:
            raise sqlite3.DatabaseError("this file is an SQLite database but not a failover "
                                        "journal (it has no meta or runs table)")
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        version = int(row[0]) if row else 1  # version 1 wrote its row just after its tables
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this failoverctl understands "
                f"({SCHEMA_VERSION}); use the failoverctl that wrote it"
            )
        if version < SCHEMA_VERSION:
            log.warning("journal %s: migrating its schema from version %d to %d",
                        self.path, version, SCHEMA_VERSION)
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](db)
            version += 1
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                   (str(SCHEMA_VERSION),))

    def check(self) -> None:
        """The full integrity check (O(size): seconds for a large journal); JournalError
        if it finds damage."""
        try:
            with self._lock:
                self._quick_check()
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from None

    def close(self) -> None:
        """Close; the last process to close a journal records that it closed cleanly, so the
        next first opener skips the full check."""
        with self._lock:
            if self._open_fd is not None:
                try:
                    fcntl.flock(self._open_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    last = False
                if last:
                    try:
                        self._sync(durable=True)
                        self._db.execute("INSERT OR REPLACE INTO meta (key, value) "
                                         "VALUES ('closed', 'clean')")
                    except sqlite3.Error as exc:  # e.g. a full disk: the next open checks
                        log.warning("journal %s: could not record a clean close (%s); the "
                                    "next start runs the full integrity check", self.path, exc)
            self._db.close()
            self._release_open()

    # --- errors -----------------------------------------------------------------------------

    @staticmethod
    def _is_full(exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return ((isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL)
                or getattr(exc, "errno", None) == errno.ENOSPC)

    def _full(self, what: str) -> JournalError:
        try:
            free = f"{_size(shutil.disk_usage(self.path.parent).free)} free"
        except OSError:
            free = "free space unknown"
        return JournalError(
            f"journal {self.path}: disk full ({free} on {self.path.parent}); {what}. Free "
            "space on that filesystem, or stop the controller, move the journal file (with "
            "its -wal file) to a larger volume and point --journal at it; recording resumes "
            "with the next change once there is room."
        )

    def _failure(self, exc: sqlite3.Error) -> Exception:
        """The error to raise for a failed statement: a JournalError saying what to do when
        the journal is full, damaged or unwritable; anything else (a busy database, a
        constraint) as it was."""
        if self._is_full(exc):
            return self._full("this change was not recorded, and nothing recorded before it "
                              "was lost")
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in _CORRUPT:
            return JournalError(
                f"journal {self.path} is damaged ({exc}). Stop the controller, move the file "
                "aside (keep it for the incident record) and start on a new --journal file.")
        if primary in _UNWRITABLE:
            return JournalError(
                f"journal {self.path} cannot be written ({exc}); check the disk and the "
                "file's permissions, or point --journal at another file.")
        return exc

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, on disk when it commits (fsync). `durable=False` is for what
        a fresh probe or the next cycle rebuilds (a policy window, a decision, a plan's
        first lease or its renewal, a uid binding): committed without waiting for the
        disk (WAL with synchronous=NORMAL: never torn, and on disk with the next durable
        commit or checkpoint), so a crash may lose the last few, never a run or a step.
        Its commit forgets the `_cached` reads it may have changed: those it names
        (`_changes`), or all of them."""
        with self._lock:
            try:
                self._sync(durable=durable)
                self._db.execute("BEGIN IMMEDIATE")
                self._changing = None  # unnamed: all
            except sqlite3.Error as exc:
                raise self._failure(exc) from None
            try:
                yield self._db
                self._db.execute("COMMIT")
                for key in self._changing if self._changing is not None else list(self._rows):
                    self._rows.pop(key, None)
            except BaseException as exc:
                self._rows.clear()  # whatever was read inside it is not what is stored
                # SQLite has already rolled back after some errors (a full disk among them):
                # rolling back again would hide the cause behind "no transaction is active"
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    failure = self._failure(exc)
                    if failure is not exc:
                        raise failure from None
                raise

    def _sync(self, *, durable: bool) -> None:
        """The connection's synchronous level for the next commit: as opened (FULL) when
        `durable`, else NORMAL (never more than as opened: a connection set to OFF stays
        so). Changed only when it differs, so a run of observations costs no PRAGMA each
        (each statement under the journal's lock is a wait for the GIL at 1,000 plans)."""
        if self._durable_level is None:
            self._durable_level = self._level = int(
                self._db.execute("PRAGMA synchronous").fetchone()[0])
        level = self._durable_level if durable else min(self._durable_level, 1)
        if level != self._level:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._level = level

    def _changes(self, *keys: tuple[str, str]) -> None:
        """Inside `_tx`: the `_cached` reads this transaction may change (none: no
        `_cached` read); a transaction that does not say may change any."""
        self._changing = {*(self._changing or ()), *keys}

    def _cached(self, key: tuple[str, str], sql: str, args: tuple[Any, ...]
                ) -> list[sqlite3.Row]:
        """`_all(sql, args)`, remembered under `key` until a commit of this journal that
        names `key` (or nothing) in its `changes`, or any commit by another connection."""
        with self._lock:
            rows = self._rows.get(key)
            if rows is not None:
                seen = self._all("PRAGMA data_version")[0][0]
                if seen == self._rows_seen:
                    return rows
                self._rows.clear()
                self._rows_seen = seen
            elif self._rows_seen is None:
                self._rows_seen = self._all("PRAGMA data_version")[0][0]
            # read now, so fresh: kept under the version last seen, which is older or the
            # same — a commit between the two forgets it with the rest (never kept stale)
            rows = self._rows[key] = self._all(sql, args)
            return rows

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                failure = self._failure(exc)
                if failure is not exc:
                    raise failure from None
                raise

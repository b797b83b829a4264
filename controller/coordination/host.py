"""Host coordination: one lock file per plan, so one process on a host acts on it.

Owns the `host` kind of `spec.coordination` (the default): every `failoverctl` process
on one host — whatever its journal, whatever its user — takes an exclusive, non-blocking
`flock` on `<lockDir>/<plan>.lock` before it acts and keeps it while it holds the lease.
Why each rule:

- **flock, held by an open file**: the kernel drops the lock the moment the process
  ends, a crash or SIGKILL included, so a dead holder never blocks the next one and no
  TTL is needed (`ttl` is accepted and ignored). flock locks belong to an open file
  description, so the object keeps its descriptor open while it holds the lock, and a
  second `HostLock` in the same process conflicts with the first exactly as another
  process would. A child made by fork shares the descriptor: it forgets the lock (closes
  its copy) and never unlocks it for its parent. A process that hangs keeps the lock.
- **The token is a counter in the lock file itself**: the larger of the last one + 1 and
  the time in milliseconds (`fencing.next_token`), written (one fixed-width `pwrite`, then
  fsync) while holding the flock, on each new acquisition only, so it only grows; the same
  holder asking again gets the same token without a write. `/run/lock` is a tmpfs and a
  lock file can be deleted: the clock part keeps a counter that starts again above every
  token handed out before, so a target that remembers the largest token it saw (a
  Kubernetes object's annotation) never refuses the next legitimate holder.
- **A directory every user shares**: `lockDir` (default `/run/lock/failoverctl`, made when
  `/run/lock` is writable, else `$TMPDIR/failoverctl-locks`) is created mode 1777 like
  /tmp and each lock file mode 0666, so two users on one host contend for the same file.
  A file is made under a temporary name and hard-linked into place, so nobody ever opens
  it before its mode is set; existing files are opened without O_CREAT (Linux's
  `protected_regular` refuses O_CREAT on another user's file in a sticky directory) and
  never through a symlink. An existing default directory that this user cannot write is
  an error, not a reason to lock elsewhere: two processes must never use two directories.
- **Still the same file**: after locking, and on each renewal, the path must still name
  the locked file; a lock file replaced or removed behind our back loses the lease.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.coordination import CoordinationError
from controller.fencing import next_token

DEFAULT_DIR = Path("/run/lock/failoverctl")
FALLBACK_NAME = "failoverctl-locks"
_WIDTH = 20  # digits of the counter: it only grows, so one fixed-width write never shrinks it
_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    lock_dir: str | None = Field(
        None, alias="lockDir", description="where the lock files live (default "
        "/run/lock/failoverctl when writable, else $TMPDIR/failoverctl-locks)")

    @field_validator("lock_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"{value!r} is relative; give an absolute path such as "
                             "/run/lock/failoverctl (every process must find the same files, "
                             "whatever its working directory)")
        return value


def build(options: Options, *, plan: str, secrets: Any = None) -> HostLock:
    return HostLock(plan, lock_dir=Path(options.lock_dir) if options.lock_dir else None)


def shared_dir(path: Path) -> Path:
    """Make `path` (mode 1777) if missing; raise CoordinationError if it cannot be used."""
    try:
        os.mkdir(path, 0o1777)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CoordinationError(f"lock directory {path} cannot be created: {exc.strerror}; "
                                "set spec.coordination.options.lockDir to a writable "
                                "directory") from None
    else:
        os.chmod(path, 0o1777)  # mkdir's mode went through the umask
    if not path.is_dir():
        raise CoordinationError(f"lock directory {path} is not a directory; set "
                                "spec.coordination.options.lockDir to a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise CoordinationError(f"lock directory {path} is not writable by this user; make "
                                f"it shared like /tmp (chmod 1777 {path}) or set "
                                "spec.coordination.options.lockDir")
    return path


def default_lock_dir() -> Path:
    """/run/lock/failoverctl when it exists or /run/lock is writable, else
    $TMPDIR/failoverctl-locks."""
    if DEFAULT_DIR.exists() or os.access(DEFAULT_DIR.parent, os.W_OK | os.X_OK):
        return shared_dir(DEFAULT_DIR)
    return shared_dir(Path(tempfile.gettempdir()) / FALLBACK_NAME)


class HostLock:
    """The `host` coordinator: `acquire` takes or keeps the plan's flock."""

    def __init__(self, plan: str, *, lock_dir: Path | None = None):
        self.plan = plan
        self.directory = shared_dir(lock_dir) if lock_dir is not None else default_lock_dir()
        self.path = self.directory / f"{plan}.lock"
        self._fd: int | None = None
        self._holder: str | None = None
        self._token: int | None = None
        self._pid = os.getpid()
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"HostLock({self.path})"

    def describe(self) -> str:
        return f"host lock {self.path}"

    def acquire(self, *, holder: str, ttl: float) -> int | None:
        with self._mutex:
            self._after_fork()
            if self._fd is not None:
                if holder != self._holder:
                    return None
                if self._same_file(self._fd):
                    return self._token
                self._close()  # replaced or removed behind our back: the lease is lost
                return None
            fd = self._open()
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return None
                if not self._same_file(fd):  # replaced between our open and our lock
                    os.close(fd)
                    return None
                token = next_token(self._read(fd))
                os.pwrite(fd, f"{token:0{_WIDTH}d}\n".encode(), 0)
                os.fsync(fd)
            except CoordinationError:
                os.close(fd)  # releases the flock
                raise
            except OSError as exc:  # (CoordinationError is one too: caught above)
                os.close(fd)
                raise CoordinationError(f"{self.describe()}: {exc.strerror}") from None
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._holder, self._token = fd, holder, token
            return token

    def release(self, *, holder: str) -> None:
        with self._mutex:
            self._after_fork()
            if self._fd is not None and holder == self._holder:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._close()

    def counter(self) -> int:
        """The counter in the lock file (the last token handed out on this host)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            return self._read(fd)
        finally:
            os.close(fd)

    # --- internals ---------------------------------------------------------------------

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._holder, self._token = None, None, None

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's lock (close our copy, never unlock)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._close()

    def _same_file(self, fd: int) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def _open(self) -> int:
        """Open the lock file read-write, making it (mode 0666) if it does not exist."""
        for _ in range(100):
            try:
                fd = os.open(self.path, _OPEN)
            except FileNotFoundError:
                self._create()
                continue
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
                    fix = f"it must be a regular file every user may write (chmod 666 {self.path})"
                elif exc.errno == errno.EISDIR:
                    fix = "it must be a regular file; remove the directory"
                else:
                    fix = "check the path"
                raise CoordinationError(f"{self.describe()} cannot be opened: "
                                        f"{exc.strerror}; {fix}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise CoordinationError(f"{self.describe()} is not a regular file; remove "
                                        "it (no failoverctl holds it)")
            return fd
        raise CoordinationError(f"{self.describe()} keeps disappearing; something removes "
                                f"files in {self.directory}")

    def _create(self) -> None:
        temp = self.directory / f".{self.plan}.lock.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, _OPEN | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.fchmod(fd, 0o666)  # open's mode went through the umask
            finally:
                os.close(fd)
            try:
                os.link(temp, self.path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            finally:
                os.unlink(temp)
        except OSError as exc:
            raise CoordinationError(f"{self.describe()} cannot be created in "
                                    f"{self.directory}: {exc.strerror}") from None

    def _read(self, fd: int) -> int:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split("\n", 1)[0].strip()
        if not text:
            return 0
        if not text.isdigit():
            raise CoordinationError(f"{self.describe()} holds {text[:30]!r}, not a counter; "
                                    "remove the file while no failoverctl runs")
        return int(text)

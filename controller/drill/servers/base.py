"""What every launcher of a real server (tests, benchmarks, drills) has in common.

A launcher owns throw-away servers listening on loopback ports picked free at run time
(`free_port`), started from a fresh directory with their output in a log file, proven
ready before `start` returns (`wait_ready`: the server answers, not merely its process
exists; one that exits while starting, or does not answer in time, raises `ServerError`
with the tail of its log), and stopped by its own PID (`terminate`: SIGTERM, SIGKILL if it
lingers), never by name. `Launcher` makes each a context manager: `with
HaproxyServers() as edge:` starts it and stops it however the block ends. A missing
binary raises `ServerError` at once naming the package to install, so a test never
silently skips.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from controller.netutil import free_port as free_port  # the launchers' port picker

Watched = tuple[str, "subprocess.Popen[Any]", Path | None]
"""A process `wait_ready` watches while it waits: (name, process, its log or None)."""


class ServerError(RuntimeError):
    """A sandbox server could not be started or answered wrongly."""


def log_tail(log: Path | None, chars: int = 2000) -> str:
    """The end of a server's log, for an error message ("" when there is none yet)."""
    if log is None:
        return ""
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-chars:]
    return ""


def wait_ready(what: str, ready: Callable[[], bool], *, timeout: float,
               watch: Sequence[Watched] = (),
               not_yet: tuple[type[BaseException], ...] = (OSError, ValueError)) -> None:
    """Poll `ready()` until it returns True; an exception in `not_yet` from it means "not
    answering yet" (the last one is named if time runs out). Raises ServerError with the
    log's tail when a watched process exits, or when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    delay, last = 0.02, ""
    while True:
        for name, proc, log in watch:
            if proc.poll() is not None:
                raise ServerError(f"{name} exited ({proc.returncode}) while waiting for "
                                  f"{what}: {log_tail(log)}")
        try:
            if ready():
                return
            last = ""
        except not_yet as exc:
            last = f" (last answer: {type(exc).__name__}: {exc})"
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {name}:\n{log_tail(log)}" for name, _, log in watch if log)
            raise ServerError(f"{what}: not ready within {timeout:g} s{last}{logs}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class Launcher(ABC):
    """A launcher is a context manager: enter starts (and waits until ready), exit stops
    by PID. `start` stops what it started before raising, so a failed start leaves
    nothing running."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

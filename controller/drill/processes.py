"""Process and port bookkeeping for the sandbox: stop by PID, find leftovers, check ports.

Owns the low-level facts the sandbox's teardown is judged on, read straight from
`/proc` and from sockets, never from what a launcher believes: whether a PID is still a
live process (a zombie is not), a process's children (an sshd's session processes), the
processes whose command line names a directory (reported, never signalled: anyone may
name any directory), and whether a loopback port is still listening (TCP) or bound
(UDP). Processes are only ever signalled by PID, SIGTERM (or the signal given) first,
SIGKILL if they linger; a PID recorded earlier is signalled only while it still names
the process that had it (same start time), so a reused PID is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
            return False
    return True


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 10.0) -> None:
    """Signal one process, wait for it to go, SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def terminate(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> None:
    """Stop a child this process started: SIGTERM, wait, SIGKILL if it lingers; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def postmaster(data: Path) -> int | None:
    """The PID in a PostgreSQL data directory's postmaster.pid, if any."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().split()[0])
    return None


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return None


def started(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if it is gone: with the
    PID, it names one process, so a PID the kernel reused is never signalled by mistake."""
    fields = _stat(pid)
    with contextlib.suppress(IndexError, ValueError, TypeError):
        return int(fields[19])  # type: ignore[index]
    return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            with contextlib.suppress(IndexError, ValueError, TypeError):
                if int(fields[1]) == pid:  # type: ignore[index]
                    found.append(int(entry.name))
    return found


def descendants(pids: list[int]) -> dict[int, int]:
    """Every live process below `pids` (children, their children, ...), PID -> start time:
    what those processes started, found while they still are its parents."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            with contextlib.suppress(IndexError, ValueError, TypeError):
                parent[int(entry.name)] = int(fields[1])  # type: ignore[index]
    below: dict[int, int] = {}
    frontier = set(pids)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier
                    and pid not in below and pid not in pids}
        for pid in frontier:
            when = started(pid)
            if when is not None:
                below[pid] = when
    return below


def stop_same(pid: int, when: int | None, sig: signal.Signals = signal.SIGTERM) -> bool:
    """`stop_pid`, only if PID is still the process that started at `when`; True if it
    was signalled."""
    if when is None or started(pid) != when or not alive(pid):
        return False
    stop_pid(pid, sig)
    return True


def naming(directory: Path) -> list[dict[str, Any]]:
    """Live processes (other than this one) with an argument in or at `directory`: only
    ever reported, never signalled for that alone (anyone may name any directory)."""
    needle = f"{directory}/"
    found: list[dict[str, Any]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if any(needle in arg + "/" for arg in args) and alive(int(entry.name)):
                found.append({"pid": int(entry.name), "command": " ".join(args)[:160]})
    return found


def command(pid: int) -> str:
    """The process's command line (first 160 characters; empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(
            errors="replace").replace("\0", " ").strip()[:160]
    except OSError:
        return ""

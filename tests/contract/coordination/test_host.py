"""The host coordinator against the real kernel: separate processes (and users) contend for
one plan's lock file, a killed holder frees it at once, and the token only grows.

Each contender is a real `failoverctl`-like process (`python -c ...` below) that takes the
lock, says what it got, and then does what it is told on stdin.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.coordination import CoordinationError
from controller.coordination.host import HostLock

ROOT = Path(__file__).resolve().parents[3]
CONTENDER = """
import json, sys
from pathlib import Path
from controller.coordination.host import HostLock
lock = HostLock(sys.argv[1], lock_dir=Path(sys.argv[2]))
holder = sys.argv[3]
print(json.dumps({"token": lock.acquire(holder=holder, ttl=30)}), flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        lock.release(holder=holder)
        print(json.dumps({"token": None}), flush=True)
    elif line.strip() == "acquire":
        print(json.dumps({"token": lock.acquire(holder=holder, ttl=30)}), flush=True)
"""


class Contender:
    """One process holding (or trying to hold) the plan's host lock."""

    def __init__(self, plan: str, lock_dir: Path, holder: str, **popen: Any):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTENDER, plan, str(lock_dir), holder],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, **popen)
        self.first = self._answer()

    def _answer(self) -> int | None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"contender failed: {self.proc.stderr.read()}")
        token = json.loads(line)["token"]
        return None if token is None else int(token)

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def acquire(self) -> int | None:
        self.tell("acquire")
        return self._answer()

    def release(self) -> None:
        self.tell("release")
        assert self._answer() is None  # released by the time it answers

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def contenders() -> Iterator[list[Contender]]:
    started: list[Contender] = []
    yield started
    for c in started:
        c.stop()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh lock directory straight under /tmp (reachable by every user), made by
    HostLock itself."""
    path = Path("/tmp") / f"failoverctl-test-{uuid.uuid4().hex[:12]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_two_processes_one_lock_and_a_killed_holder_frees_it_at_once(
        tmp_path: Path, contenders: list[Contender]) -> None:
    first = Contender("payments", tmp_path, "cli-alice")
    contenders.append(first)
    assert first.first is not None
    second = Contender("payments", tmp_path, "cli-bob")  # another journal, another user
    contenders.append(second)
    assert second.first is None
    assert first.acquire() == first.first  # renewal: the same token

    first.kill()  # no release, no TTL: the kernel drops the lock with the process
    taken = second.acquire()
    assert taken is not None and taken > first.first


def test_release_hands_over_at_once_with_a_larger_token(
        tmp_path: Path, contenders: list[Contender]) -> None:
    first, second = (Contender("payments", tmp_path, "a"), Contender("payments", tmp_path, "b"))
    contenders += [first, second]
    assert first.first is not None and second.first is None
    first.release()
    taken = second.acquire()
    assert taken is not None and taken > first.first
    assert first.acquire() is None
    other_plan = Contender("billing", tmp_path, "a")  # plans never block each other
    contenders.append(other_plan)
    assert other_plan.first is not None


def test_another_user_contends_for_the_same_file(shared_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to start a process as user nobody")
    # a forked child turned into user nobody (it cannot exec root's Python): it makes the
    # directory and the lock file, takes the lock and holds it until killed
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            token = HostLock("payments", lock_dir=shared_dir).acquire(holder="nobody",
                                                                       ttl=30)
            os.write(writer, json.dumps({"token": token}).encode())
            os.close(writer)
            signal.pause()
        finally:
            os._exit(1)
    os.close(writer)
    try:
        with os.fdopen(reader) as answer:
            taken = json.loads(answer.read())["token"]
        assert taken is not None
        assert stat.S_IMODE(shared_dir.stat().st_mode) == 0o1777  # shared like /tmp
        path = shared_dir / "payments.lock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 and path.stat().st_uid == 65534

        root = HostLock("payments", lock_dir=shared_dir)
        assert root.acquire(holder="root-cli", ttl=30) is None
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    token = root.acquire(holder="root-cli", ttl=30)
    assert token is not None and token > taken
    root.release(holder="root-cli")


def test_the_same_holder_gets_its_token_back_without_a_write(tmp_path: Path) -> None:
    lock = HostLock("payments", lock_dir=tmp_path)
    token = lock.acquire(holder="me", ttl=30)
    assert token is not None and token >= int(time.time() * 1000) - 60_000  # clock-based
    before = lock.path.stat().st_mtime_ns, lock.path.read_bytes()
    for _ in range(3):
        assert lock.acquire(holder="me", ttl=30) == token
    assert (lock.path.stat().st_mtime_ns, lock.path.read_bytes()) == before
    assert lock.acquire(holder="someone-else", ttl=30) is None

    # a second object in the same process (another journal) is another contender
    other = HostLock("payments", lock_dir=tmp_path)
    assert other.acquire(holder="other", ttl=30) is None
    lock.release(holder="someone-else")  # not the holder: nothing happens
    assert other.acquire(holder="other", ttl=30) is None
    lock.release(holder="me")
    second = other.acquire(holder="other", ttl=30)
    assert second is not None and second > token
    assert other.counter() == second


def test_a_forked_child_never_unlocks_its_parents_lock(tmp_path: Path) -> None:
    lock = HostLock("payments", lock_dir=tmp_path)
    token = lock.acquire(holder="parent", ttl=30)
    pid = os.fork()
    if pid == 0:  # the child: it does not hold the lock, and releasing it changes nothing
        code = 0 if lock.acquire(holder="parent", ttl=30) is None else 1
        lock.release(holder="parent")
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert HostLock("payments", lock_dir=tmp_path).acquire(holder="x", ttl=30) is None
    assert lock.acquire(holder="parent", ttl=30) == token


def test_a_lock_file_replaced_behind_the_holders_back_loses_the_lease(tmp_path: Path) -> None:
    lock = HostLock("payments", lock_dir=tmp_path)
    first = lock.acquire(holder="me", ttl=30)
    assert first is not None
    lock.path.unlink()  # someone cleans the directory: a new file means a new lock
    assert lock.acquire(holder="me", ttl=30) is None
    time.sleep(0.002)  # the clock part: a later millisecond
    # the counter starts again with the file, yet above every token handed out before
    again = HostLock("payments", lock_dir=tmp_path).acquire(holder="x", ttl=30)
    assert again is not None and again > first


def test_unusable_lock_files_and_directories_are_errors_that_name_them(tmp_path: Path) -> None:
    (tmp_path / "payments.lock").write_text("not a number\n")
    with pytest.raises(CoordinationError, match=r"payments\.lock holds 'not a number'"):
        HostLock("payments", lock_dir=tmp_path).acquire(holder="me", ttl=30)
    (tmp_path / "billing.lock").mkdir()
    with pytest.raises(CoordinationError, match="Is a directory; it must be a regular file"):
        HostLock("billing", lock_dir=tmp_path).acquire(holder="me", ttl=30)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConnectionError, match=r"file is not a directory.*lockDir"):
        HostLock("payments", lock_dir=tmp_path / "file")
    (tmp_path / "target").write_text("")
    (tmp_path / "web.lock").symlink_to(tmp_path / "target")  # never followed
    with pytest.raises(CoordinationError, match=r"web\.lock cannot be opened.*chmod 666"):
        HostLock("web", lock_dir=tmp_path).acquire(holder="me", ttl=30)

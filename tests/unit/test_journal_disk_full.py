"""A full disk under the journal is reported as a full disk, with what to do — not as
SQLite's follow-on "cannot rollback - no transaction is active" — nothing recorded
before is lost, and recording resumes once there is room.

On a real full filesystem: a 2 MiB tmpfs mounted by the test (it runs as root, like the
rest of this suite's servers need), filled with a file, unmounted in a finally.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.journal import Journal, JournalError
from controller.model import Phase
from tests.unit.test_engine import World, make_plan


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.fail("mounting the test's tmpfs needs root (run the suite as root, as in CI)",
                    pytrace=False)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of the filesystem; the file to delete to make room again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28  # ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_a_full_disk_is_named_with_what_to_do_and_loses_nothing(small_disk: Path) -> None:
    journal = Journal(small_disk / "journal.db")
    world = World(make_plan(), journal)
    assert world.tick(True).phase is Phase.HEALTHY
    world.tick(True)
    decisions = journal.decisions("memory-drill")
    filler = fill(small_disk)
    with pytest.raises(JournalError) as err:
        for _ in range(3):  # the first tick whose write needs a new page fails
            world.tick(False)
    message = str(err.value)
    assert "disk full" in message and "0 B free" in message
    assert "Free space on that filesystem" in message and "--journal" in message
    assert "cannot rollback" not in message
    # a write larger than SQLite's page cache spills mid-transaction; SQLite then rolls
    # back by itself, and rolling back again used to raise "cannot rollback - no
    # transaction is active" in place of the full disk
    with pytest.raises(JournalError, match="disk full") as err:
        journal.audit(at=1.0, actor="oncall", action="note", detail="x" * 3_000_000)
    assert "cannot rollback" not in str(err.value)
    filler.unlink()
    # nothing recorded before the disk filled was lost, and the engine goes on recording
    assert journal.decisions("memory-drill")[:len(decisions)] == decisions
    assert world.outage().phase is Phase.FAILED_OVER
    journal.check()
    journal.close()
    again = Journal(small_disk / "journal.db")
    assert again.runs("memory-drill")[0].phase is Phase.FAILED_OVER
    again.close()


def test_a_journal_that_cannot_be_created_on_a_full_disk_says_so(small_disk: Path) -> None:
    fill(small_disk)
    with pytest.raises(JournalError, match=r"disk full \(0 B free .*\); it could not be "
                                           r"opened\. Free space"):
        Journal(small_disk / "journal.db")

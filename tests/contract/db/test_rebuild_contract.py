"""The calls that rebuild a node as a standby of another (what a database failback
makes), run on the in-memory pair and on a real PostgreSQL primary and streaming standby
through the same tests: a clean `stop`, idempotent, knowing where a primary's WAL ends;
a primary's `size` (its LSN, the WAL it wrote, its databases); `rewind` of the old
primary onto the promoted standby's timeline, then `follow`, bring every row committed
at the promoted node to it, and it streams; a rewind that cannot be done raises
`RewindFailed`, and a `basebackup` (the old data kept aside) does the same job; a
running node is never rewound; a fence is undone (`unfence`) when a switchover cannot go
on."""

from __future__ import annotations

import time

import pytest

from controller import fencing
from controller.db import FenceMethod, Node, RewindFailed, Unreachable
from controller.fencing import Fence
from controller.model import PermanentError
from tests.contract.db.conftest import DbWorld


def fenced() -> fencing.Fence:
    return Fence(7, "test-1", label="run-1/failback-promote-db")


def incident(world: DbWorld) -> None:
    """dc-a stopped, dc-b promoted and taking writes (rows 1-3 before, 11-12 after)."""
    for row in (1, 2, 3):
        world.commit(0, row)
    with fencing.scope(fenced()):
        world.db.fence(world.primary, method=FenceMethod.SSH_STOP)
        world.db.promote(world.standby, timeout=30)
    for row in (11, 12):
        world.commit(1, row)


def streams(world: DbWorld, standby: Node, primary: Node, rows: int) -> bool:
    """The standby streams from `primary` on its timeline and has its `rows` rows (polled:
    real replication is asynchronous)."""
    index = 0 if standby == world.primary else 1
    for _ in range(300):
        ahead, behind = world.db.state(primary), world.db.state(standby)
        if behind.in_recovery and behind.streaming and behind.timeline == ahead.timeline \
                and world.rows(index) == rows:
            return True
        time.sleep(0.05)
    return False


def test_a_stop_is_clean_and_idempotent(world: DbWorld) -> None:
    with fencing.scope(fenced()):
        first = world.db.stop(world.primary)
        again = world.db.stop(world.primary)
        standby = world.db.stop(world.standby)
    assert first["already"] is False and again["already"] is True
    assert again["lastLsn"] == first["lastLsn"]
    # a primary's WAL ends with its shutdown checkpoint; a standby's end is not known
    # (its last restartpoint is before what it replayed)
    assert first["walEnd"] == first["lastLsn"] and "walEnd" not in standby
    with pytest.raises(Unreachable):
        world.db.state(world.primary)


def test_a_primary_says_its_wal_position_the_wal_it_wrote_and_its_databases_size(
        world: DbWorld) -> None:
    before = world.db.size(world.primary)
    world.commit(0, 1)
    for _ in range(100):  # a session's WAL counts once it ends
        after = world.db.size(world.primary)
        if after.wal_bytes > before.wal_bytes:
            break
        time.sleep(0.05)
    assert after.lsn > before.lsn and after.wal_bytes > before.wal_bytes
    assert after.databases_bytes >= before.databases_bytes > 0


def test_the_old_primary_rewound_follows_the_promoted_node_with_every_row(world: DbWorld
                                                                          ) -> None:
    incident(world)
    with fencing.scope(fenced()):
        rewound = world.db.rewind(world.primary, source=world.standby)
        followed = world.db.follow(world.primary, source=world.standby)
        again = world.db.follow(world.primary, source=world.standby)
    world.adopt()
    assert "rewound" in rewound and followed["already"] is False and again["already"]
    # the rows committed at dc-b during the incident came home, and keep coming
    assert streams(world, world.primary, world.standby, rows=5)
    assert world.db.state(world.primary).timeline == 2
    world.commit(1, 13)
    assert streams(world, world.primary, world.standby, rows=6)


def test_a_crashed_old_primary_is_sized_for_a_rewind_then_rewound(world: DbWorld) -> None:
    for row in (1, 2, 3):
        world.commit(0, row)
    assert streams(world, world.standby, world.primary, rows=3)  # replicated, then:
    world.crash_primary()  # a dry run refuses a node not shut down cleanly: recovered first
    with fencing.scope(fenced()):
        world.db.promote(world.standby, timeout=30)
    world.commit(1, 11)
    with fencing.scope(fenced()):
        size = world.db.rewind_size(world.primary, source=world.standby)
        world.db.rewind(world.primary, source=world.standby)
        world.db.follow(world.primary, source=world.standby)
    world.adopt()
    assert 0 < size.copy_mb <= size.source_mb
    assert streams(world, world.primary, world.standby, rows=4)


def test_a_rewind_that_cannot_be_done_falls_to_a_base_backup(world: DbWorld) -> None:
    world.break_rewind()
    with fencing.scope(fenced()):
        world.db.create_slot(world.primary, "stale")
    incident(world)
    with fencing.scope(fenced()):
        with pytest.raises(RewindFailed, match=r"pg_rewind of .* exited"):
            world.db.rewind(world.primary, source=world.standby)
        done = world.db.basebackup(world.primary, source=world.standby,
                                   aside="before-failback-run-1")
        again = world.db.basebackup(world.primary, source=world.standby,
                                    aside="before-failback-run-1")  # a retry
        world.db.follow(world.primary, source=world.standby)
    world.adopt()
    assert done["aside"].endswith(".before-failback-run-1") and again == done
    if world.servers is not None:  # the old data is kept, not deleted
        assert (world.servers[0].data.parent / "data.before-failback-run-1"
                / "PG_VERSION").exists()
    assert streams(world, world.primary, world.standby, rows=5)
    assert world.db.slots(world.primary) == []  # a base backup copies no slot


def test_a_running_node_is_never_rewound_nor_replaced(world: DbWorld) -> None:
    incident(world)
    with fencing.scope(fenced()):
        world.db.follow(world.primary, source=world.standby)
        with pytest.raises(PermanentError, match="is running: stop it before rewinding"):
            world.db.rewind(world.primary, source=world.standby)
        with pytest.raises(PermanentError, match="is running: stop it before replacing"):
            world.db.basebackup(world.primary, source=world.standby, aside="x")
    world.adopt()


def test_the_old_primary_streams_through_a_slot_made_at_the_promoted_node(world: DbWorld
                                                                          ) -> None:
    incident(world)
    with fencing.scope(fenced()):
        made = world.db.create_slot(world.standby, "failover_failback")
        again = world.db.create_slot(world.standby, "failover_failback")
        size = world.db.rewind_size(world.primary, source=world.standby)
        world.db.rewind(world.primary, source=world.standby)
        world.db.follow(world.primary, source=world.standby, slot="failover_failback")
    world.adopt()
    assert made == {"slot": "failover_failback", "already": False}
    assert again["already"] is True
    assert 0 <= size.copy_mb <= size.source_mb  # 0 of 0: a clean stop at the fork
    assert streams(world, world.primary, world.standby, rows=5)
    for _ in range(100):  # the walreceiver reports it streams before the slot is in use
        slots = {s.name: s for s in world.db.slots(world.standby)}
        if slots["failover_failback"].active:
            break
        time.sleep(0.05)
    assert slots["failover_failback"].active
    with fencing.scope(fenced()):  # on a standby too (one left from when it was a primary)
        world.db.create_slot(world.primary, "stale")
        dropped = world.db.drop_slot(world.primary, "stale")
        gone = world.db.drop_slot(world.primary, "stale")
    assert dropped["already"] is False and gone["already"] is True
    assert "stale" not in {s.name for s in world.db.slots(world.primary)}


@pytest.mark.parametrize("method", [FenceMethod.SQL, FenceMethod.SSH_STOP])
def test_a_fence_is_undone_and_the_primary_takes_writes_again(world: DbWorld,
                                                              method: FenceMethod) -> None:
    with fencing.scope(fenced()):
        world.db.fence(world.primary, method=method)
        assert world.db.unfence(world.primary, method=method)["already"] is False
        assert world.db.unfence(world.primary, method=method)["already"] is True
    world.adopt()
    assert world.db.state(world.primary).writable
    world.commit(0, 1)
    assert world.rows(0) == 1

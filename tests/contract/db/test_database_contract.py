"""The `Database` contract, run on the in-memory pair and on a real PostgreSQL primary with
its streaming standby through the same tests: what each node says of itself, a fence
that makes the old primary refuse writes (SQL) or stops it (by PID), idempotent and
saying so, a promotion to the next timeline that is refused the second time, and a node
that does not answer raising `Unreachable`."""

from __future__ import annotations

import pytest

from controller import registry
from controller.db import (
    Database,
    FenceMethod,
    NotInRecovery,
    Unreachable,
    lsn_text,
    parse_lsn,
)
from tests.contract.db.conftest import DbWorld


def test_a_primary_and_its_streaming_standby_say_what_they_are(world: DbWorld) -> None:
    primary, standby = world.db.state(world.primary), world.db.state(world.standby)
    assert not primary.in_recovery and primary.writable and not primary.read_only
    assert standby.in_recovery and standby.streaming and not standby.writable
    assert standby.timeline == primary.timeline
    assert 0 < standby.lsn <= primary.lsn
    assert standby.lag_seconds == 0.0


def test_a_sql_fence_makes_the_primary_refuse_writes_and_is_idempotent(world: DbWorld
                                                                        ) -> None:
    first = world.db.fence(world.primary, method=FenceMethod.SQL)
    assert first["method"] == "sql" and first["already"] is False
    assert parse_lsn(first["lastLsn"]) > 0
    state = world.db.state(world.primary)
    assert state.read_only and not state.writable
    again = world.db.fence(world.primary, method=FenceMethod.SQL)
    assert again["already"] is True


def test_a_stop_fence_stops_the_primary_and_is_idempotent(world: DbWorld) -> None:
    first = world.db.fence(world.primary, method=FenceMethod.SSH_STOP)
    assert first["method"] == "ssh-stop" and first["already"] is False
    with pytest.raises(Unreachable):
        world.db.state(world.primary)
    assert world.db.fence(world.primary, method=FenceMethod.SSH_STOP)["already"] is True


def test_a_promotion_moves_the_standby_to_the_next_timeline_once(world: DbWorld) -> None:
    before = world.db.state(world.standby)
    promoted = world.db.promote(world.standby, timeout=30, queries=["SELECT 1"])
    after = world.db.state(world.standby)
    assert not after.in_recovery and after.writable
    assert after.timeline == before.timeline + 1
    assert promoted.state.timeline == after.timeline and promoted.state.writable
    assert promoted.values == ["1"]  # the queries, answered in the promotion's session
    with pytest.raises(NotInRecovery, match="is not in recovery: there is nothing to "
                       "promote"):
        world.db.promote(world.standby, timeout=30)
    assert world.db.state(world.standby).timeline == after.timeline


def test_a_node_that_does_not_answer_is_unreachable(world: DbWorld) -> None:
    world.cut_primary()
    with pytest.raises(Unreachable, match=world.primary.describe()):
        world.db.state(world.primary)
    with pytest.raises(Unreachable):
        world.db.fence(world.primary, method=FenceMethod.SQL)


def test_the_fence_path_is_checked_without_fencing(world: DbWorld) -> None:
    said = world.db.check_fence(world.primary, method=FenceMethod.SQL)
    assert world.primary.describe() in said
    assert world.db.state(world.primary).writable


def test_lsn_text_reads_back() -> None:
    assert lsn_text(parse_lsn("16/B374D848")) == "16/B374D848"


def test_every_registered_kind_implements_the_protocol() -> None:
    """Nominally, so `ready()` has its default and no caller probes for methods."""
    for kind in registry.known_kinds("database"):
        assert Database in registry.load("database", kind).__mro__, kind

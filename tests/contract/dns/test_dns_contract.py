"""The DnsProvider contract, run against the in-memory fake, real BIND and moto's Route 53.

Every test runs three times (world = memory | rfc2136 | route53), so the fake cannot drift
from the real providers: reads, compare-and-swap writes, conflicts that change nothing,
all-or-nothing batches, refusing empty sets, TTL-only changes and exact reverts.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.dns import DnsConflict
from controller.model import PermanentError, Record


def A(name: str, *values: str, ttl: int = 300) -> Record:
    return Record(name, "A", ttl, tuple(sorted(values)))


def one(world: Any, name: str, rtype: str = "A") -> Record | None:
    found = [r for r in world.provider.records(names=[name]) if r.type == rtype]
    assert len(found) <= 1
    return found[0] if found else None


def test_records_reads_what_is_there_whatever_the_case_or_dot(world: Any) -> None:
    name = world.name("read")
    world.seed(A(name, "192.0.2.2", "192.0.2.1", ttl=120))
    got = world.provider.records(names=[name.upper().rstrip(".")])
    assert [(r.name, r.type, r.ttl, set(r.values)) for r in got] == [
        (name, "A", 120, {"192.0.2.1", "192.0.2.2"})]


def test_records_only_lists_the_names_asked_for(world: Any) -> None:
    a, b = world.name("only-a"), world.name("only-b")
    world.seed(A(a, "192.0.2.1"))
    world.seed(A(b, "192.0.2.2"))
    assert {r.name for r in world.provider.records(names=[a])} == {a}
    assert world.provider.records(names=[world.name("missing")]) == []


def test_swap_replaces_exactly_the_expected_values(world: Any) -> None:
    name = world.name("swap")
    world.seed(A(name, "192.0.2.1"))
    before = world.provider.records(names=[name])
    evidence = world.provider.apply(expected=before, desired=[A(name, "198.51.100.1",
                                                                ttl=60)])
    assert one(world, name) == A(name, "198.51.100.1", ttl=60)
    assert [r["values"] for r in evidence["before"]] == [["192.0.2.1"]]
    assert [r["values"] for r in evidence["after"]] == [["198.51.100.1"]]


def test_concurrent_change_between_read_and_write_is_rejected(world: Any) -> None:
    name = world.name("race")
    world.seed(A(name, "192.0.2.1"))
    read = world.provider.records(names=[name])
    world.seed(A(name, "203.0.113.7"))  # someone else writes after our read
    with pytest.raises(DnsConflict, match=r"is \['203\.0\.113\.7'\], expected "
                                          r"\['192\.0\.2\.1'\]; nothing changed"):
        world.provider.apply(expected=read, desired=[A(name, "198.51.100.1")])
    assert one(world, name) == A(name, "203.0.113.7")


def test_creates_a_set_that_was_expected_absent(world: Any) -> None:
    name = world.name("create")
    world.provider.apply(expected=[], desired=[A(name, "198.51.100.2")])
    assert one(world, name) == A(name, "198.51.100.2")


def test_a_set_expected_absent_but_present_is_not_overwritten(world: Any) -> None:
    name = world.name("exists")
    world.seed(A(name, "192.0.2.1"))
    with pytest.raises(DnsConflict, match="expected \\[\\]"):
        world.provider.apply(expected=[], desired=[A(name, "198.51.100.2")])
    assert one(world, name) == A(name, "192.0.2.1")


def test_refuses_to_leave_a_name_empty_and_changes_nothing(world: Any) -> None:
    name = world.name("empty")
    world.seed(A(name, "192.0.2.1"))
    before = world.provider.records(names=[name])
    with pytest.raises(PermanentError, match=f"refusing to leave {name} A empty"):
        world.provider.apply(expected=before, desired=[Record(name, "A", 300, ())])
    assert one(world, name) == A(name, "192.0.2.1")


def test_a_batch_is_all_or_nothing(world: Any) -> None:
    good, stale = world.name("batch-good"), world.name("batch-stale")
    world.seed(A(good, "192.0.2.1"))
    world.seed(A(stale, "192.0.2.2"))
    read = world.provider.records(names=[good, stale])
    world.seed(A(stale, "203.0.113.9"))
    with pytest.raises(DnsConflict, match=stale.replace(".", r"\.")):
        world.provider.apply(expected=read, desired=[A(good, "198.51.100.1"),
                                                     A(stale, "198.51.100.2")])
    assert one(world, good) == A(good, "192.0.2.1")
    assert one(world, stale) == A(stale, "203.0.113.9")


def test_multi_value_sets_compare_as_sets(world: Any) -> None:
    name = world.name("multi")
    world.seed(A(name, "192.0.2.1", "192.0.2.2"))
    expected = [Record(name, "A", 999, ("192.0.2.2", "192.0.2.1"))]  # order and TTL ignored
    world.provider.apply(expected=expected, desired=[A(name, "198.51.100.1", "198.51.100.2")])
    assert set(one(world, name).values) == {"198.51.100.1", "198.51.100.2"}  # type: ignore[union-attr]


def test_ttl_only_change_keeps_the_values(world: Any) -> None:
    """The pre-lowering of a TTL ahead of a cutover is a swap to the same values."""
    name = world.name("ttl")
    world.seed(A(name, "192.0.2.1", ttl=3600))
    before = world.provider.records(names=[name])
    world.provider.apply(expected=before, desired=[A(name, "192.0.2.1", ttl=30)])
    assert one(world, name) == A(name, "192.0.2.1", ttl=30)


def test_revert_restores_the_exact_previous_set(world: Any) -> None:
    name = world.name("revert")
    world.seed(A(name, "192.0.2.1", "192.0.2.2", ttl=600))
    original = world.provider.records(names=[name])
    cutover = [A(name, "198.51.100.1", ttl=60)]
    world.provider.apply(expected=original, desired=cutover)
    world.provider.apply(expected=cutover, desired=original)
    assert world.provider.records(names=[name]) == original


def test_other_record_types(world: Any) -> None:
    name = world.name("txt")
    world.seed(Record(name, "TXT", 300, ('"site=dc-a"',)))
    before = world.provider.records(names=[name])
    world.provider.apply(expected=before, desired=[Record(name, "TXT", 300, ('"site=dc-b"',))])
    assert one(world, name, "TXT") == Record(name, "TXT", 300, ('"site=dc-b"',))


# --- compare-and-delete: a record a step created is removed on revert -------------------


def test_delete_removes_a_set_that_still_holds_the_expected_values(world: Any) -> None:
    name, keep = world.name("delete"), world.name("delete-keep")
    world.seed(A(keep, "192.0.2.9"))
    world.provider.apply(expected=[], desired=[A(name, "198.51.100.5", "198.51.100.6")])
    evidence = world.provider.delete(expected=[A(name, "198.51.100.6", "198.51.100.5")])
    assert world.provider.records(names=[name]) == []
    assert [set(r["values"]) for r in evidence["deleted"]] == [{"198.51.100.5",
                                                               "198.51.100.6"}]
    assert evidence["alreadyAbsent"] == []
    assert one(world, keep) == A(keep, "192.0.2.9")  # another name is never touched


def test_delete_of_a_set_someone_changed_is_refused_and_changes_nothing(world: Any) -> None:
    name = world.name("delete-changed")
    world.provider.apply(expected=[], desired=[A(name, "198.51.100.5")])
    world.seed(A(name, "203.0.113.5"))  # an operator re-pointed it during the incident
    with pytest.raises(DnsConflict, match=r"is \['203\.0\.113\.5'\], expected "
                                          r"\['198\.51\.100\.5'\]; nothing deleted"):
        world.provider.delete(expected=[A(name, "198.51.100.5")])
    assert one(world, name) == A(name, "203.0.113.5")


def test_delete_is_all_or_nothing(world: Any) -> None:
    ours, theirs = world.name("delete-ours"), world.name("delete-theirs")
    world.provider.apply(expected=[], desired=[A(ours, "198.51.100.7"),
                                               A(theirs, "198.51.100.8")])
    world.seed(A(theirs, "203.0.113.8"))
    with pytest.raises(DnsConflict, match=theirs.replace(".", r"\.")):
        world.provider.delete(expected=[A(ours, "198.51.100.7"), A(theirs, "198.51.100.8")])
    assert one(world, ours) == A(ours, "198.51.100.7")
    assert one(world, theirs) == A(theirs, "203.0.113.8")


def test_delete_again_after_a_crash_reports_the_set_already_absent(world: Any) -> None:
    name = world.name("delete-twice")
    created = A(name, "198.51.100.9")
    world.provider.apply(expected=[], desired=[created])
    world.provider.delete(expected=[created])
    again = world.provider.delete(expected=[created])
    assert again["deleted"] == [] and again["alreadyAbsent"] == [created.to_json()]
    assert world.provider.records(names=[name]) == []


def test_delete_needs_the_values_it_must_still_hold(world: Any) -> None:
    name = world.name("delete-blind")
    world.seed(A(name, "192.0.2.1"))
    with pytest.raises(PermanentError, match="give the values it must still hold"):
        world.provider.delete(expected=[Record(name, "A", 300, ())])
    assert one(world, name) == A(name, "192.0.2.1")


# --- verify: proof that records written earlier are served ------------------------------


def test_verify_proves_records_in_place(world: Any) -> None:
    name = world.name("verify")
    rec = A(name, "198.51.100.11", ttl=60)
    world.provider.apply(expected=[], desired=[rec])
    evidence = world.provider.verify(desired=[rec])
    assert evidence["verified"] == [rec.to_json()]


def test_verify_of_other_values_is_a_conflict_and_writes_nothing(world: Any) -> None:
    name = world.name("verify-other")
    world.seed(A(name, "203.0.113.11"))
    with pytest.raises(DnsConflict, match=r"is \['203\.0\.113\.11'\], expected "
                                          r"\['198\.51\.100\.11'\]"):
        world.provider.verify(desired=[A(name, "198.51.100.11")])
    assert one(world, name) == A(name, "203.0.113.11")


def test_verify_of_a_record_without_values_proves_it_absent(world: Any) -> None:
    name = world.name("verify-absent")
    gone = Record(name, "A", 0, ())
    assert world.provider.verify(desired=[gone])["verified"] == [gone.to_json()]
    world.seed(A(name, "192.0.2.12"))
    with pytest.raises(DnsConflict, match=r"is \['192\.0\.2\.12'\], expected \[\]"):
        world.provider.verify(desired=[gone])


# --- fencing: a step that must stop writes nothing ------------------------------------------


def test_a_cancelled_step_neither_swaps_nor_deletes(world: Any) -> None:
    from controller import fencing

    name, created = world.name("fenced"), world.name("fenced-created")
    world.seed(A(name, "192.0.2.13"))
    world.provider.apply(expected=[], desired=[A(created, "198.51.100.13")])
    fence = fencing.Fence(7, "controller-a")
    fence.cancel("step timeout passed")
    with fencing.scope(fence):
        with pytest.raises(fencing.Cancelled, match="step timeout passed"):
            world.provider.apply(expected=[A(name, "192.0.2.13")],
                                 desired=[A(name, "198.51.100.14")])
        with pytest.raises(fencing.Cancelled):
            world.provider.delete(expected=[A(created, "198.51.100.13")])
    assert one(world, name) == A(name, "192.0.2.13")
    assert one(world, created) == A(created, "198.51.100.13")

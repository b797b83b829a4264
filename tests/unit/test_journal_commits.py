"""How many commits a quiet cycle costs the journal (issue 20: 1,000 new plans at once, each
statement run under the journal's one lock): a cycle keeps its decision, the readiness
checks it ran and the plan's state row in one transaction, and a run of observations
sets the connection's synchronous level once, not around every commit."""

from __future__ import annotations

from controller.journal import Journal, PlanState
from controller.model import Phase
from tests.unit.test_engine import World, make_plan


def transactions(journal: Journal, act: object) -> list[list[str]]:
    """The statements between each BEGIN and COMMIT that `act()` ran (statements outside
    a transaction, reads, are left out)."""
    seen: list[str] = []
    journal._db.set_trace_callback(seen.append)
    try:
        act()  # type: ignore[operator]
    finally:
        journal._db.set_trace_callback(None)
    out: list[list[str]] = []
    current: list[str] | None = None
    for sql in seen:
        if sql.startswith("BEGIN"):
            current = []
        elif sql == "COMMIT":
            assert current is not None
            out.append(current)
            current = None
        elif current is not None:
            current.append(sql)
    return out


def test_a_cycle_keeps_its_decision_readiness_and_state_in_one_commit(
        journal: Journal) -> None:
    w = World(make_plan(), journal)
    w.tick(True)  # the plan's first lease and first decision
    w.clock.advance(3600)  # its readiness checks are due again
    txs = transactions(journal, lambda: w.tick(True))
    writes = [tx for tx in txs if any("plan_state" in s or "decisions" in s for s in tx)]
    assert len(writes) == 1, txs
    assert any(s.startswith("INSERT INTO plan_state") for s in writes[0])
    state = journal.plan_state(w.plan.name)
    assert state is not None and state.readiness["checkedAt"] == w.clock.now()
    assert state.last_decision == journal.decisions(w.plan.name)[-1]["sentence"]


def test_a_run_of_observations_sets_the_synchronous_level_once(journal: Journal) -> None:
    seen: list[str] = []
    journal._db.set_trace_callback(seen.append)
    try:
        for at in range(5):
            journal.save_plan_state(PlanState("shop", Phase.HEALTHY, None, "dc-a", "healthy",
                                              {}, float(at), {}), durable=False)
    finally:
        journal._db.set_trace_callback(None)
    assert [s for s in seen if s.startswith("PRAGMA synchronous")] == [
        "PRAGMA synchronous", "PRAGMA synchronous=1"]

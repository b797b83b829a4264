"""The promote step that asks a person to fence an old primary it cannot reach, under the
deterministic simulation (`tests/reliability/sim`, plan shape `promote-ask`: no fencing
command, no human step): it waits, awaiting a person, and promotes only after someone
said done (the simulated person powers dc-a's database off first); no one within the
step's wait fails it `fence-unconfirmed`, never promoted; a reachable old primary is
fenced without asking anyone. The sweep (`test_simulation.py`) draws this shape too,
with the invariants of `sim/db_checks.py`: never two writable primaries, never a
promotion after a person's fence before their done."""

from __future__ import annotations

import pytest

from controller.model import StepStatus
from tests.reliability.sim.harness import Result, Sim
from tests.reliability.test_simulation import over_seeds, promotion, quiet

ASK = ("promote-ask", False, False, False)


def test_the_step_asks_a_person_and_promotes_only_after_they_said_done() -> None:
    # nobody says done until t=9 s: the step waits, then promotes after the person's fence
    def check(result: Result) -> None:
        promotes = [w for w in result.writes_log if w.method == "promote"]
        assert len(promotes) == 1 and promotes[0].t > 9.0, promotes
        step = promotion(result)
        assert step["status"] == StepStatus.SUCCEEDED.value, step
        assert step["evidence"]["fence"]["how"] == "a person (oncall, said done)", step
        assert step["evidence"]["person"]["askedAt"] < step["evidence"]["fence"][
            "confirmedAt"], step["evidence"]
        person = [w for w in result.writes_log if w.group == "person"]
        assert person and person[0].t < promotes[0].t

    over_seeds(lambda seed: quiet(seed, plan_key=ASK, db_lost=True, clis=[(9.0, "done")]),
               check, range(6))


def test_no_one_saying_done_fails_the_step_fence_unconfirmed() -> None:
    def check(result: Result) -> None:
        assert not [w for w in result.writes_log if w.method == "promote"]
        step = promotion(result)
        assert step["status"] == StepStatus.FAILED.value, step
        assert step["error"].startswith("fence-unconfirmed: no one confirmed the fence of "
                                        "dc-a:5432 within 12.00 s"), step

    over_seeds(lambda seed: quiet(seed, plan_key=ASK, db_lost=True), check, range(4))


def test_a_reachable_old_primary_is_fenced_without_asking() -> None:
    def check(result: Result) -> None:
        step = promotion(result)
        assert step["status"] == StepStatus.SUCCEEDED.value, step
        assert step["evidence"]["fence"]["how"] == "sql" and "person" not in step["evidence"]

    over_seeds(lambda seed: quiet(seed, plan_key=ASK), check, range(4))


def test_a_promote_step_that_does_not_wait_for_the_person_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the invariants bite: a step that goes on as if someone had confirmed the fence
    # promotes while the unreachable old primary still takes writes
    import controller.steps.promote as promote

    monkeypatch.setattr(promote, "_by_person", lambda *args: {"how": "nobody asked"})
    for seed in range(3):  # (not through `simulate`: an expected violation is not tallied)
        result = Sim(quiet(seed, plan_key=ASK, db_lost=True, name="unconfirmed")).run()
        assert result.violation is not None, "a promotion without a person went unnoticed"
        assert result.violation.kind in ("a promote without a fence",
                                         "two writable primaries"), result.report()

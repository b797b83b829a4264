"""The deterministic simulation of issue 14: one actor, exactly once, under every schedule.

The real engine, executor, journal and policy with the in-memory backends run under a
simulated clock and scheduler (`tests/reliability/sim`): several replicas and CLI
processes on one journal, crashes at any point (mid-step included), lease expiry, paused
processes, slow, hanging and failing backends, timeouts, partitions, and failover,
failback, approve and done requests at random moments. After every event the invariants
of `sim/invariants.py` are checked (one writer, terminal is terminal, exact failback,
protection armed, exactly once, journal and status agree). A schedule is a pure function
of its seed; a violation prints the seed, the schedule, the last events and how to
replay it:

    FAILOVER_SIM_SEED=<seed> .venv/bin/python -m pytest tests/reliability/test_simulation.py

`FAILOVER_SIM_SCHEDULES` sets how many seeded schedules the sweep runs (default 10,000, in
one worker process per CPU); `tests/benchmarks/soak_simulation.py` runs a million.

The scenario tests below pin one item of the issue each, on a hand-made schedule, over a
few scheduling seeds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from controller.journal import Journal
from controller.model import Phase, StepStatus
from tests.reliability.conftest import TALLY
from tests.reliability.sim import plans
from tests.reliability.sim.harness import Result, Schedule, Sim, draw, run_schedule
from tests.reliability.sim.runner import run_many
from tests.reliability.sim.scheduler import WALL_BASE
from tests.reliability.sim.world import Faults

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = int(os.environ.get("FAILOVER_SIM_SCHEDULES", "10000"))
REPLAY = os.environ.get("FAILOVER_SIM_SEED")
SHOWN = 3  # full reports printed when the sweep finds violations


@pytest.mark.timeout(900)  # 10,000 schedules: ~2 min on two idle cores (see the report)
def test_every_simulated_schedule_keeps_the_invariants(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    if REPLAY is not None:
        result = run_schedule(int(REPLAY))
        print("\n".join([f"schedule: {result.schedule}", *result.trace]))
        TALLY["sim_schedules"] += 1
        TALLY["sim_violations"] += int(result.violation is not None)
        assert result.violation is None, result.report()
        return
    load = os.getloadavg()[0]  # the machine's, before this run's workers add theirs
    summary = run_many(range(SCHEDULES))
    TALLY["sim_schedules"] += summary.schedules
    TALLY["sim_violations"] += summary.violations
    with capsys.disabled():  # the figure belongs in the run's output, passed or not
        print(f"\nsimulation: {summary.figures()}; {os.cpu_count()} CPUs, load average "
              f"{load:.1f} before the run")
    assert summary.schedules == SCHEDULES
    if summary.failed:
        seeds = sorted(summary.failed)
        listing = "\n".join(f"  seed {seed}: {summary.failed[seed][0]}" for seed in seeds[:50])
        reports = "\n\n".join(summary.failed[seed][1] for seed in seeds[:SHOWN])
        pytest.fail(f"{summary.violations} of {summary.schedules} simulated schedules broke "
                    f"an invariant ({dict(summary.kinds())}):\n{listing}\n\n{reports}",
                    pytrace=False)


def test_a_schedule_is_a_pure_function_of_its_seed() -> None:
    for seed in (7, 1234, 99_001):
        first, second = run_schedule(seed), run_schedule(seed)
        assert first.trace == second.trace, f"seed {seed} ran differently twice"
        assert (first.slices, first.writes, first.runs) == (
            second.slices, second.writes, second.runs)
    # and in another process, with another string hash seed (a replay runs in a new one)
    code = ("import hashlib; from tests.reliability.sim.harness import run_schedule; "
            "r = run_schedule(1234); "
            "print(hashlib.sha256('\\n'.join(r.trace).encode()).hexdigest(), r.slices)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)})
    here = run_schedule(1234)
    digest = hashlib.sha256("\n".join(here.trace).encode()).hexdigest()
    assert out.stdout.split() == [digest, str(here.slices)], out.stderr[-2000:]


# --- scenarios: one issue item each ---------------------------------------------------------


def quiet(seed: int, **changes: Any) -> Schedule:
    """A schedule with nothing going wrong but what `changes` adds: one replica, the
    primary failing at t=1 s for good, no faults."""
    base = Schedule(seed=seed, plan_key=("basic", False, True, False), replicas=1,
                    horizon=30.0, lease_ttl=6.0, coordinator=False, outages=[(1.0, 1e9)],
                    crashes=[], restart=None, same_name=0.0, stalls=[], partitions=[],
                    clis=[], person=[], faults=Faults())
    return replace(base, **changes)


def simulate(schedule: Schedule) -> Result:
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    result = Sim(replace(schedule, name=schedule.name or test), capture=True).run()
    TALLY["sim_schedules"] += 1
    TALLY["sim_violations"] += int(result.violation is not None)
    return result


def ok(result: Result) -> Result:
    assert result.violation is None, result.report()
    return result


def runs_of(result: Result, kind: str) -> list[dict[str, Any]]:
    return [r for r in result.journal if r["kind"] == kind and r["steps"]]


def step_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == name)


def over_seeds(make: Callable[[int], Schedule], check: Callable[[Result], None],
               seeds: range = range(12)) -> None:
    for seed in seeds:
        check(ok(simulate(make(seed))))


def test_a_stepped_shift_that_times_out_writes_nothing_after_it_is_recorded_failed() -> None:
    # item 1: steps [10, 50, 100] with a 1 s pause and a 4 s timeout; the traffic backend
    # turns slow (0.5-4 s a call) once the shift has begun: it cannot finish in time
    wrote = 0

    def check(result: Result) -> None:
        nonlocal wrote
        failover = runs_of(result, "failover")[0]
        label = f"{failover['id']}/redirect-traffic"
        ended = [t for t, run, step, _, new in result.history
                 if f"{run}/{step}" == label and new in (StepStatus.FAILED.value,
                                                         StepStatus.REVERTED.value)]
        assert ended, f"the shift never ended failed: {step_of(failover, 'redirect-traffic')}"
        late = [w for w in result.writes_log if w.label == label and w.t > ended[0]]
        assert not late, f"written after it was recorded failed: {late}"
        assert failover["phase"] == Phase.FAILED.value
        mine = [w.after for w in result.writes_log
                if w.backend == "edge" and (w.label or "").startswith(f"{failover['id']}/")]
        wrote += bool(mine)
        evidence = step_of(failover, "redirect-traffic")["evidence"]
        assert not mine or dict(mine[-1]) == plans.PRIMARY_WEIGHTS \
            or "revertError" in evidence, \
            f"the run left traffic at {mine[-1]} and says nothing ({failover['outcome']})"

    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", True, True, False),
                                  faults=Faults(sluggish=[("edge", 5.0, 60.0)])), check,
               range(20))
    assert wrote >= 10, f"only {wrote} of 20 shifts wrote before their timeout"


def test_a_second_replica_never_performs_the_running_step_of_the_first() -> None:
    # item 2: the shift outlasts the 3 s lease several times over; the holder keeps its
    # lease while it waits, so the other replica never runs the step
    def check(result: Result) -> None:
        failover = runs_of(result, "failover")[0]
        label = f"{failover['id']}/redirect-traffic"
        writers = {w.holder for w in result.writes_log if w.label == label}
        assert len(writers) == 1, f"written by {writers}"
        assert step_of(failover, "redirect-traffic")["attempts"] == 1

    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", False, True, False),
                                  replicas=3, lease_ttl=3.0, faults=Faults(slow=0.5)), check)


def test_an_old_unfinished_run_is_superseded_not_resumed() -> None:
    # item 4: the journal holds an unfinished failover run older than a failback that
    # finished (as adopted from another replica's status)
    def prepare(sim: Sim) -> None:
        journal = Journal(sim.path)
        journal.listeners.append(partial(sim.mirror, journal))  # its status, as adopted
        try:
            now = sim.sched.now()
            steps = [s.model_dump(mode="json", by_alias=True) | {"target": s.target}
                     for s in sim.plan.spec.steps]
            journal.start_run(plan=sim.plan.name, kind="failover", phase=Phase.FAILING_OVER,
                              level=1, reason="old", requested_by="controller",
                              detected_at=now - 120, now=now - 100, steps=steps,
                              approved=True)
            newer = journal.start_run(plan=sim.plan.name, kind="failback",
                                      phase=Phase.FAILING_BACK, level=None, reason="newer",
                                      requested_by="oncall", detected_at=now - 50,
                                      now=now - 50, steps=[], approved=True)
            journal.update_run(newer.id, phase=Phase.HEALTHY, finished_at=now - 40,
                               outcome="all steps succeeded")
        finally:
            journal.close()

    def check(result: Result) -> None:
        old = next(r for r in result.journal if r["reason"] == "old")
        assert old["phase"] == Phase.SUPERSEDED.value, old
        assert all(s["status"] == StepStatus.PENDING.value for s in old["steps"])
        assert not [w for w in result.writes_log if (w.label or "").startswith(old["id"])]

    over_seeds(lambda seed: quiet(seed, replicas=2, outages=[], prepare=prepare), check,
               range(4))


def test_after_a_premature_failback_the_plan_trips_again_after_the_cooldown() -> None:
    # item 5: the primary never comes back; someone fails back at t=5 s anyway, before
    # the plan has cleared (it clears after three probes that pass)
    def check(result: Result) -> None:
        failovers = runs_of(result, "failover")
        failbacks = runs_of(result, "failback")
        assert failbacks and failbacks[0]["phase"] == Phase.HEALTHY.value, failbacks
        assert any(f["startedAt"] > failbacks[0]["finishedAt"] for f in failovers), \
            "no failover after the premature failback"

    over_seeds(lambda seed: quiet(seed, clis=[(5.0, "failback")], clear_after=3,
                                  horizon=30.0), check, range(6))


def test_a_restore_whose_answer_was_lost_is_not_performed_again() -> None:
    # exactly once: the restore lands, its answer is lost (ConnectionError); a retry
    # must not restore a second time over the first
    over_seeds(lambda seed: quiet(seed, plan_key=("restore", False, False, False),
                                  faults=Faults(lost_ack=1.0)), lambda result: None,
               range(4))


def test_a_paused_holder_writes_nothing_once_another_replica_took_its_lease() -> None:
    # item 3: the holder is paused (a long GC pause, SIGSTOP) mid-step for twice its lease
    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", False, True, False),
                                  replicas=2, lease_ttl=3.0, restart=(1.0, 2.0),
                                  stalls=[(4.5, "holder", 7.0)]),
               lambda result: None)


def test_a_paused_holder_does_not_write_before_the_new_holder_does() -> None:
    # item 3: as above, but the replica that took over cannot reach the backends yet, so
    # no larger token has reached them: only the paused holder itself can tell that its
    # lease has lapsed (a fence that knows when its lease ends)
    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", False, True, False),
                                  replicas=2, lease_ttl=3.0, stalls=[(4.5, "holder", 5.0)],
                                  partitions=[(6.0, 14.0, "r2", "backends")]),
               lambda result: None)


def test_a_holder_paused_between_attempts_does_not_reopen_a_step_another_finished() -> None:
    # seed 4233 of the sweep: r1 retries the database failback (dc-a cut off) and is paused
    # 17 s in its back-off; the CLI takes the lease, fails the step and the run, releases
    # the lease; r1 takes it again under a new token. Its view of the step is stale: it
    # stands by instead of recording the finished step running again.
    result = run_schedule(4233)
    assert result.violation is None, result.report()
    trace = "\n".join(result.trace)
    assert "r1-host-101 takes the lease, token 3" in trace
    assert "failback-promote-db running -> failed" in trace


def test_a_holder_cut_from_the_coordinator_stops_before_its_lease_expires() -> None:
    # partitions: the holder loses the coordinator mid-step; the other replica takes over
    def check(result: Result) -> None:
        failover = runs_of(result, "failover")[0]
        assert failover["finishedAt"] is not None, failover

    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", False, True, False),
                                  replicas=2, lease_ttl=3.0, coordinator=True,
                                  partitions=[(4.5, 12.0, "holder", "lease")]), check)


def test_a_lease_store_error_mid_step_stops_the_work_before_any_retry() -> None:
    # item 1: the journal cannot renew the lease for a moment (an error, not a lost lease)
    # while the shift's backend call is slow: the attempt must stop before another starts
    over_seeds(lambda seed: quiet(seed, plan_key=("stepped", True, True, False),
                                  faults=Faults(sluggish=[("edge", 0.5, 8.0)]),
                                  partitions=[(4.8, 7.0, "r1", "lease")]),
               lambda result: None)


def test_a_hanging_backend_leaves_the_step_unknown_until_its_work_stops() -> None:
    # item 1: the traffic backend hangs (not cancellable) far past the step's timeout
    def check(result: Result) -> None:
        failover = runs_of(result, "failover")[0]
        label = f"{failover['id']}/redirect-traffic"
        statuses = [new for _, run, step, _, new in result.history
                    if f"{run}/{step}" == label]
        assert StepStatus.UNKNOWN.value in statuses, statuses

    over_seeds(lambda seed: quiet(seed, plan_key=("basic", True, True, False),
                                  faults=Faults(hangs=[("edge", 2.0, 16.0)])), check,
               range(6))


def test_a_failback_names_what_a_person_changed_during_the_incident() -> None:
    # item 7: after the failover someone sets the weights by hand; the failback leaves
    # them and says so
    def check(result: Result) -> None:
        failback = runs_of(result, "failback")[0]
        assert "left" in (failback["outcome"] or ""), failback["outcome"]

    over_seeds(lambda seed: quiet(seed, person=[9.0], clis=[(12.0, "failback")]), check,
               range(6))


def test_a_failback_restores_what_the_first_step_found_a_persons_earlier_edit_too() -> None:
    # invariant 3: a person sets the weights by hand after the failover run started but
    # before its traffic step read them (the restore before it is slow); that edit is the
    # world the step found, and the failback brings it back, naming nothing
    def check(result: Result) -> None:
        failover, failback = runs_of(result, "failover")[0], runs_of(result, "failback")[0]
        edit = next(w for w in result.writes_log if w.group == "person")
        shift = next(w for w in result.writes_log
                     if w.label == f"{failover['id']}/redirect-traffic")
        assert failover["startedAt"] - WALL_BASE < edit.t < shift.t, (edit, shift)
        assert dict(shift.before) == {"dc-a": 30, "dc-b": 70}, shift
        assert failback["phase"] == Phase.HEALTHY.value, failback
        assert "left" not in (failback["outcome"] or ""), failback["outcome"]
        edge = [w.after for w in result.writes_log if w.backend == "edge"][-1]
        assert dict(edge) == {"dc-a": 30, "dc-b": 70}, edge

    over_seeds(lambda seed: quiet(seed, plan_key=("restore", False, True, False),
                                  faults=Faults(sluggish=[("db", 3.0, 9.0)]), person=[4.5],
                                  clis=[(16.0, "failback")]), check, range(6))


def test_a_failback_that_leaves_an_object_changed_unnamed_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # invariant 3 still bites: a traffic revert that silently writes nothing leaves the
    # weights on dc-b after a failback that says it completed
    from controller.registry import STEP_KINDS as HANDLERS

    def revert(step: Any, ctx: Any, evidence: dict[str, Any]) -> dict[str, Any]:
        return {"writes": 0}

    monkeypatch.setattr(HANDLERS["traffic"], "revert", revert)
    for seed in range(3):  # (not through `simulate`: an expected violation is not tallied)
        result = Sim(quiet(seed, clis=[(12.0, "failback")], name="broken-revert")).run()
        assert result.violation is not None, "a failback left dc-b's weights unnoticed"
        assert result.violation.kind == "failback did not restore the world", \
            result.report()
        assert "edge is (('dc-a', 0), ('dc-b', 100)), not (('dc-a', 100), ('dc-b', 0))" \
            in result.violation.detail, result.violation.detail
        assert "zone" not in result.violation.detail.split(" (the incident")[0]


def test_the_draw_covers_every_fault() -> None:
    """The sweep's schedules include each kind of fault and request (so a sweep with no
    violations means something)."""
    drawn = [draw(seed) for seed in range(2000)]
    assert {s.plan_key[0] for s in drawn} == set(plans.SHAPES)
    assert sum(bool(s.crashes) for s in drawn) > 500
    assert sum(any(n is not None for _, n, _ in s.crashes) for s in drawn) > 200
    assert sum(bool(s.stalls) for s in drawn) > 100
    assert {p[3] for s in drawn for p in s.partitions} == {"backends", "lease", "both"}
    assert {k for s in drawn for _, k in s.clis} == {"failover", "failback", "approve",
                                                     "done"}
    assert sum(bool(s.faults.hangs) for s in drawn) > 200
    assert sum(bool(s.faults.down) for s in drawn) > 200
    assert sum(bool(s.faults.sluggish) for s in drawn) > 200
    assert sum(s.coordinator for s in drawn) > 500
    assert sum(bool(s.person) for s in drawn) > 100
    assert sum(s.clear_after > 1 for s in drawn) > 500
    assert sum(s.db_lost for s in drawn) > 100


# --- the promote step (issue 16) -----------------------------------------------------------


def promotion(result: Result) -> dict[str, Any]:
    return step_of(runs_of(result, "failover")[0], "promote-db")


def test_a_lost_database_host_is_fenced_by_the_stonith_command_before_the_promotion() -> None:
    def check(result: Result) -> None:
        step = promotion(result)
        assert step["status"] == StepStatus.SUCCEEDED.value, step
        assert step["evidence"]["fence"]["how"] == "command stonith", step["evidence"]
        fences = [w for w in result.writes_log if w.backend == "pg" and w.method == "fence"]
        promotes = [w for w in result.writes_log if w.method == "promote"]
        assert len(promotes) == 1 and fences and fences[0].t <= promotes[0].t

    over_seeds(lambda seed: quiet(seed, plan_key=("promote", False, False, False),
                                  db_lost=True), check, range(6))


def test_a_lost_database_host_without_a_command_waits_for_a_person() -> None:
    # nobody says done until t=12 s: no promotion before; the person's fence comes first
    def check(result: Result) -> None:
        promotes = [w for w in result.writes_log if w.method == "promote"]
        assert len(promotes) == 1 and promotes[0].t > 12.0, promotes
        step = promotion(result)
        assert step["evidence"]["fence"]["how"] == "a person (step fence-primary)", step
        person = [w for w in result.writes_log if w.group == "person"]
        assert person and person[0].t < promotes[0].t

    over_seeds(lambda seed: quiet(seed, plan_key=("promote-person", False, False, False),
                                  db_lost=True, clis=[(12.0, "done")]), check, range(6))


def test_a_promotion_whose_answer_was_lost_is_recorded_done_not_repeated() -> None:
    # half the writes' answers are lost (the fence's too): a retry or a later run finds
    # the standby promoted; it is promoted once, and some attempt records it done
    found = 0

    def check(result: Result) -> None:
        nonlocal found
        assert len([w for w in result.writes_log if w.method == "promote"]) == 1
        found += any(s["evidence"].get("alreadyPromoted") for run in
                     runs_of(result, "failover") for s in run["steps"]
                     if s["name"] == "promote-db")

    over_seeds(lambda seed: quiet(seed, plan_key=("promote", False, False, False),
                                  faults=Faults(lost_ack=0.5)), check)
    assert found >= 3, f"only {found} of 12 schedules found the promotion landed"


def test_a_promote_step_that_skips_the_fence_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # invariant 7 bites: a promote step that never fences leaves two writable primaries
    # once the lost database host comes back
    import controller.steps.promote as promote

    monkeypatch.setattr(promote, "_fence", lambda db, p: {"how": "skipped"})
    for seed in range(3):  # (not through `simulate`: an expected violation is not tallied)
        result = Sim(quiet(seed, plan_key=("promote", False, False, False), db_lost=True,
                           name="unfenced-promote")).run()
        assert result.violation is not None, "a promotion without a fence went unnoticed"
        assert result.violation.kind == "two writable primaries", result.report()


# --- the database failback (issue 16) ------------------------------------------------------


def test_a_failback_brings_every_row_written_at_dc_b_home_before_the_traffic() -> None:
    def check(result: Result) -> None:
        back = runs_of(result, "failback")[0]
        first = back["steps"][0]
        assert first["action"] == "db-failback" and first["status"] == "succeeded", first
        promotes = [w for w in result.writes_log if w.method == "promote"]
        reverts = [w for w in result.writes_log if w.backend in ("edge", "zone")
                   and (w.label or "").startswith(back["id"])]
        assert len(promotes) == 2 and reverts and promotes[1].t < reverts[0].t
        assert promotes[1].label == f"{back['id']}/failback-promote-db"
        assert set(first["evidence"]["phases"]) == {"rebuild", "catchUp", "fence", "replay",
                                                    "promote", "demote"}

    over_seeds(lambda seed: quiet(seed, plan_key=("promote", False, False, False),
                                  outages=[(1.0, 8.0)], clis=[(14.0, "failback")],
                                  horizon=40.0), check, range(6))


def test_a_failback_that_promotes_a_node_behind_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # invariant 8 bites: a db-failback that neither rebuilds dc-a nor waits for it to
    # catch up promotes a node without the rows committed at dc-b
    import controller.steps.db_failback as db_failback

    def follow_only(self: Any, node: Any, *, source: Any) -> dict[str, Any]:
        self.db.stop(node)
        self.db.follow(node, source=source)
        return {"method": "none"}

    monkeypatch.setattr(db_failback._Failback, "rebuild", follow_only)
    monkeypatch.setattr(db_failback, "_wait", lambda read, done, timeout: read())
    for seed in range(3):  # (not through `simulate`: an expected violation is not tallied)
        result = Sim(quiet(seed, plan_key=("promote", False, False, False),
                           outages=[(1.0, 8.0)], clis=[(14.0, "failback")], horizon=40.0,
                           name="failback-behind")).run()
        assert result.violation is not None, "a failback that lost writes went unnoticed"
        assert result.violation.kind == "a failback lost committed writes", result.report()

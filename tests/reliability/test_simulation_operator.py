"""The operator in the deterministic simulation (issues 22 and 20): leader changes, a plan
deleted and created again, status writes that fail, shards, under every schedule.

Two or three real `Operator` replicas, each with its own journal, over one in-memory API
server (`controller.testing_kube.FakeKube`, held to the real kube-apiserver by
`tests/contract/kube/test_kube_contract.py`), with the simulation's backends, samples and
clock (`tests/reliability/sim/operators.py`); in three schedules in ten, two shards of
two or three replicas each (`--shard K/2`, or `--shard-selector KEY=a` and `!KEY`, each
shard electing its leader on its own Lease) and two plans, each with its own world,
moved between the shards at any moment, mid-run too. Leaders are killed (mid-step too), cut
off the API server, paused, told to stop, slowed down by a slow API server (renewals
landing between a raise's read and write); the plan is deleted at once, mid-run or while
failed over, and created again, sometimes without a step; status writes are answered 503
(any, a run's final record, a failed step's); requests come as annotations. The
invariants of `sim/op_checks.py` are checked after every event — among them that each
plan is acted on only by the leader of its shard, that a shard's leader failing moves
only that shard, and that a shard's working leader reconciles each of its plans. A
violation prints the seed, the schedule, the last events and the replay line:

    FAILOVER_SIM_SEED=<seed> .venv/bin/python -m pytest \
        tests/reliability/test_simulation_operator.py

`FAILOVER_SIM_OP_SCHEDULES` sets how many seeded schedules the sweep runs (default 200,
about a minute on two cores); `tests/benchmarks/soak_simulation.py --operator` runs more.

The scenario tests reproduce the three lifecycle items of issue 22 the simulation covers,
and the shards of issue 20, each over a few scheduling seeds.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.crd import PLURAL
from controller.model import Phase, StepStatus
from tests.reliability.conftest import TALLY
from tests.reliability.sim.harness import Result
from tests.reliability.sim.operators import (
    KEY,
    SECOND,
    OperatorSim,
    OpSchedule,
    draw_operator,
    run_operator_schedule,
)
from tests.reliability.sim.runner import run_many
from tests.reliability.sim.world import Faults

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = int(os.environ.get("FAILOVER_SIM_OP_SCHEDULES", "200"))
REPLAY = os.environ.get("FAILOVER_SIM_SEED")
SHOWN = 3


@pytest.mark.timeout(900)
def test_every_simulated_operator_schedule_keeps_the_invariants(
        capsys: pytest.CaptureFixture[str]) -> None:
    if REPLAY is not None:
        result = run_operator_schedule(int(REPLAY))
        print("\n".join([f"schedule: {result.schedule}", *result.trace]))
        TALLY["sim_schedules"] += 1
        TALLY["sim_violations"] += int(result.violation is not None)
        assert result.violation is None, result.report()
        return
    load = os.getloadavg()[0]
    summary = run_many(range(SCHEDULES), operator=True, chunk=10)
    TALLY["sim_schedules"] += summary.schedules
    TALLY["sim_violations"] += summary.violations
    with capsys.disabled():
        print(f"\noperator simulation: {summary.figures()}; {os.cpu_count()} CPUs, load "
              f"average {load:.1f} before the run")
    assert summary.schedules == SCHEDULES
    for event in ("crashes", "deletes", "recreates", "standdowns", "status_503", "requests",
                  "checked released", "checked mirrored", "sharded", "relabels",
                  "checked moved", "checked takeovers", "checked lease changes",
                  "checked attended", "foreign", "rival", "checked token raises",
                  "checked one deployment", "slow_api"):
        assert summary.counts[event] > 0, f"no schedule had any {event}: {summary.counts}"
    if summary.failed:
        seeds = sorted(summary.failed)
        listing = "\n".join(f"  seed {seed}: {summary.failed[seed][0]}" for seed in seeds[:50])
        reports = "\n\n".join(summary.failed[seed][1] for seed in seeds[:SHOWN])
        pytest.fail(f"{summary.violations} of {summary.schedules} simulated operator "
                    f"schedules broke an invariant ({dict(summary.kinds())}):\n{listing}\n\n"
                    f"{reports}", pytrace=False)


def test_an_operator_schedule_is_a_pure_function_of_its_seed() -> None:
    for seed in (3, 6, 1234):  # (6: two shards, plans moved between them)
        first, second = run_operator_schedule(seed), run_operator_schedule(seed)
        assert first.trace == second.trace, f"seed {seed} ran differently twice"
        assert (first.slices, first.writes, first.runs) == (
            second.slices, second.writes, second.runs)
    # and in another process, with another string hash seed (a replay runs in a new one)
    code = ("import hashlib; from tests.reliability.sim.operators import "
            "run_operator_schedule; r = run_operator_schedule(1234); "
            "print(hashlib.sha256('\\n'.join(r.trace).encode()).hexdigest(), r.slices)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)})
    digest = hashlib.sha256("\n".join(second.trace).encode()).hexdigest()
    assert out.stdout.split() == [digest, str(second.slices)], out.stderr[-2000:]


# --- scenarios: the lifecycle items of issue 22 -------------------------------------------


def quiet(seed: int, **changes: Any) -> OpSchedule:
    """Nothing going wrong but what `changes` adds: two replicas, the primary failing at
    t=1 s for good, a 6 s Lease, restarts 0.5-2 s after a crash."""
    base = draw_operator(seed)
    base = replace(base, plan_key=("basic", False, False, False), replicas=2,
                   outages=[(1.0, 1e9)], crashes=[], restart=(0.5, 2.0), same_name=0.0,
                   stalls=[], partitions=[], faults=Faults(), clear_after=1,
                   leader=(6.0, 4.0, 1.0), active=30.0, standdowns=[], deletes=[],
                   recreate=None, status_faults=[], requests=[], shards=1, selector=False,
                   second=None, labels=(None, None), relabels=[], foreign=None,
                   slow=None)
    changed = replace(base, **changes)
    return replace(changed, horizon=changed.active + changed.leader[0] + 10.0)


def simulate(schedule: OpSchedule) -> tuple[OperatorSim, Result]:
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    sim = OperatorSim(replace(schedule, name=f"{test} (seed {schedule.seed})"), capture=True)
    result = sim.run()
    TALLY["sim_schedules"] += 1
    TALLY["sim_violations"] += int(result.violation is not None)
    assert result.violation is None, result.report()
    return sim, result


def changes_of_the_plan(sim: OperatorSim) -> list[tuple[str, dict[str, Any], str]]:
    """Every change of the plan object: (ADDED|MODIFIED|DELETED, object, who made it)."""
    return [(kind, obj, by) for _, kind, key, obj, by in sim.cluster.log if key == KEY]


def test_a_deleted_plan_keeps_its_finalizer_across_a_leader_change() -> None:
    # item 1: deleted while its human step waits, traffic already on dc-b; then the leader
    # is killed. The next leader adopts the run from the status and keeps the finalizer
    # until `done` finishes the run.
    for seed in range(4):
        sim, _ = simulate(quiet(
            seed, plan_key=("manual", False, False, False),
            requests=[(t, "approve") for t in (3.0, 5.0, 7.0, 9.0)] + [(24.0, "done"),
                                                                        (27.0, "done")],
            deletes=[(11.0, "mid-run")], crashes=[(13.0, None, "holder")]))
        changes = changes_of_the_plan(sim)
        deleting = next(i for i, (_, obj, _) in enumerate(changes)
                        if obj["metadata"].get("deletionTimestamp"))
        marked = changes[deleting][1]["status"]["run"]
        assert [s["status"] for s in marked["steps"]][-1] == StepStatus.AWAITING_PERSON.value
        kind, gone, remover = changes[-1]
        assert kind == "DELETED", "the plan was never released"
        holders = {proc.group: proc.holder for proc in sim.processes}
        assert holders[remover] != changes[deleting][1]["status"]["fencingHolder"], \
            "released by the leader it was deleted under: no leader change in between"
        run = gone["status"]["run"]
        assert run["id"] == marked["id"] and run["finishedAt"] is not None
        assert run["phase"] == Phase.FAILED_OVER.value
        assert sim.counts["crashes"] == 1 and sim.counts["restarts"] >= 1


def test_a_503_on_a_failed_abort_steps_status_write_still_ends_the_run_failed() -> None:
    # item 2: dns-cutover (onFailure: abort) fails; the status write saying so is answered
    # 503 (once, or six times in a row): the run still ends Failed, and the status says so
    for seed in range(6):
        sim, _ = simulate(quiet(
            seed, faults=Faults(down=[("zone", 0.0, 1e9)]),
            status_faults=[(0.0, "failed-step", 1 if seed % 2 else 6)],
            crashes=[(9.0, None, "holder")] if seed >= 4 else []))
        assert sum(fault.hits for fault in sim.injected) >= 1
        status = sim.status()
        assert status["run"]["kind"] == "failover"
        assert status["run"]["phase"] == Phase.FAILED.value, status["run"]["outcome"]
        assert status["phase"] == Phase.FAILED.value
        dns = next(s for s in status["run"]["steps"] if s["name"] == "dns-cutover")
        assert dns["status"] == StepStatus.FAILED.value


def test_a_503_on_a_runs_final_status_write_is_written_again() -> None:
    # item 2: the write of the run's final record is answered 503 twice; the status still
    # comes to say FailedOver, with the run finished
    for seed in range(4):
        sim, _ = simulate(quiet(seed, status_faults=[(0.0, "final", 2)]))
        assert sum(fault.hits for fault in sim.injected) == 2
        status = sim.status()
        assert status["phase"] == Phase.FAILED_OVER.value
        assert status["run"]["finishedAt"] is not None
        assert status["run"]["phase"] == Phase.FAILED_OVER.value


def test_a_plan_recreated_without_a_step_starts_afresh_and_never_runs_it() -> None:
    # item 3: the first plan's run fails (dns-cutover down, onFailure: revert); the plan is
    # deleted and created again without dns-cutover: the new object shows none of the old
    # run, trips on the outage that goes on, and runs only the steps it has
    ran = 0
    for seed in range(6):
        sim, result = simulate(quiet(
            seed, plan_key=("basic", False, True, False),
            faults=Faults(down=[("zone", 0.0, 30.0)]),
            deletes=[(14.0, "now")], recreate=(1.0, True)))
        changes = changes_of_the_plan(sim)
        added = [i for i, (kind, _, _) in enumerate(changes) if kind == "ADDED"]
        assert len(added) == 2, "the plan was not created again"
        old = {obj["status"]["run"]["id"] for _, obj, _ in changes[:added[1]]
               if (obj.get("status") or {}).get("run")}
        new = [obj for _, obj, _ in changes[added[1]:] if obj.get("status")]
        assert old and new
        assert all((obj["status"].get("run") or {}).get("id") not in old for obj in new)
        assert new[0]["status"]["phase"] != Phase.FAILED.value
        run = sim.status().get("run") or {}
        if run:  # (none when the old plan's last run had failed over before it went)
            ran += 1
            assert [s["name"] for s in run["steps"]] == [
                "notify-incident", "redirect-traffic", "link-test"], f"the new plan ran {run}"
            assert run["phase"] == Phase.FAILED_OVER.value
        dns_writes = [w for w in result.writes_log if w.backend == "zone"
                      and not (w.label or "").startswith(tuple(old))]
        assert not dns_writes, dns_writes
    assert ran >= 3, f"the recreated plan ran in only {ran} of 6 schedules"


# --- scenarios: shards (issue 20) ---------------------------------------------------------


def sharded(seed: int, **changes: Any) -> OpSchedule:
    """`quiet`, over two shards of two replicas (`--shard 0/2`, `--shard 1/2`): `sim` in
    shard 0 and `sim-b` in shard 1 by the hash of their names."""
    return quiet(seed, **{"shards": 2, "second": ("basic", False, False, False),
                          "labels": (None, None), **changes})


def leases(sim: OperatorSim) -> dict[int, list[str]]:
    """Each shard's Lease holders, in the order they took it."""
    taken: dict[int, list[str]] = {0: [], 1: []}
    for _, _, key, obj, _ in sim.cluster.log:
        shard = sim.ops.lease_shard.get(key)
        holder = obj["spec"].get("holderIdentity") if shard is not None else None
        if shard is not None and holder and (not taken[shard] or taken[shard][-1] != holder):
            taken[shard].append(holder)
    return taken


def test_killing_one_shards_leader_moves_only_that_shard() -> None:
    # shard 0's leader is killed mid-failover: shard 0 moves to its other replica, which
    # finishes sim's run; shard 1 keeps its leader, which fails sim-b over undisturbed
    for seed in range(4):
        sim, result = simulate(sharded(seed, crashes=[(1.6 + 0.1 * seed, None, "holder:0")]))
        taken = leases(sim)
        assert len(taken[0]) == 2 and len(taken[1]) == 1, taken
        shard = {proc.holder: proc.shard for proc in sim.processes}
        assert {shard[h] for h in taken[0]} == {0} and shard[taken[1][0]] == 1
        assert sim.status()["fencingHolder"] == taken[0][1]
        assert sim.status(SECOND)["fencingHolder"] == taken[1][0]
        for name in (KEY[3], SECOND):
            assert sim.status(name)["phase"] == Phase.FAILED_OVER.value, name
        writers = {w.holder for w in result.writes_log
                   if (w.label or "").startswith(f"{SECOND}-")}
        assert writers == {taken[1][0]}, writers
        assert sim.counts["crashes"] == 1


def test_a_plan_moved_to_another_shard_is_taken_over_by_that_shards_leader() -> None:
    # `kubectl label fop/sim failover.example.io/shard=1` while it is healthy (by hash it
    # is in shard 0): shard 1's leader takes it over and fails it over when it trips;
    # shard 0's leader never acts on it again. With selectors (`KEY=a` / `!KEY`) alike.
    for seed in range(4):
        selector = seed % 2 == 1
        sim, result = simulate(sharded(
            seed, selector=selector, labels=("a", None) if selector else (None, None),
            outages=[(5.0, 1e9)], relabels=[(3.0, 0, "quiet")]))
        assert sim.counts["relabels"] == 1 and sim.ops.checked["moved"] >= 1
        shard = {proc.holder: proc.shard for proc in sim.processes}
        status = sim.status()
        assert shard[status["fencingHolder"]] == 1
        assert status["phase"] == Phase.FAILED_OVER.value
        sim_writes = [w for w in result.writes_log if not (w.label or "").startswith(f"{SECOND}-")]
        assert sim_writes and {shard[w.holder or ""] for w in sim_writes} == {1}


def test_a_plan_moved_mid_run_or_as_it_trips_is_acted_on_by_one_leader_at_a_time() -> None:
    # Moved while its failover's step runs (a slow restore), or as it trips (t=4 s, the
    # primary failing since 3 s): the old shard's leader, which keeps its own Lease, stops
    # at its step's next fence check (the plan has left its shard) and never outbids the
    # new one; the new shard's leader, whose Lease counts its tokens apart, leaves the
    # plan alone for a Lease's duration, then adopts it with a token above the stored one.
    # Also when the new shard's token is already the larger (its first leader was killed:
    # token 1 against 0), so the stored token does not tell the plan came from elsewhere:
    # its watch saw it arrive. One actor per plan (the invariant "two actors on one
    # plan"), and the run ends failed over under the new shard's leader.
    cases = [sharded(seed, plan_key=("restore", False, False, False), faults=Faults(
        slow=0.3), relabels=[(1.0, 0, "mid-run")]) for seed in range(6)]
    cases += [sharded(seed, outages=[(3.0, 1e9)], relabels=[(4.0, 0, "quiet")])
              for seed in (0, 2)]
    cases += [sharded(seed, plan_key=("restore", False, False, False), outages=[(9.0, 1e9)],
                      crashes=[(0.5, None, "holder:1")], relabels=[(9.5, 0, "mid-run")],
                      active=40.0) for seed in range(4)]
    for schedule in cases:
        sim, _ = simulate(schedule)
        assert sim.counts["relabels"] == 1, schedule.relabels
        shard = {proc.holder: proc.shard for proc in sim.processes}
        status = sim.status()
        assert shard[status["fencingHolder"]] == 1, status["fencingHolder"]
        assert status["phase"] == Phase.FAILED_OVER.value, status["phase"]


def test_plans_left_with_another_leases_token_raise_each_shards_token_once() -> None:
    # Both plans start with a status an unsharded deployment (since stopped) wrote under
    # its own Lease, with a token larger than a new shard's, or equal: each shard's leader
    # leaves its plan alone for a Lease's duration, raises its Lease's token once, to one
    # above the stored one, and fails its plan over; no Lease changes hands (the
    # invariant "a Lease's token raised again and again" holds the rest)
    for seed, token in [(0, 25), (1, 25), (2, 0), (3, 3)]:
        sim, result = simulate(sharded(seed, foreign=token, outages=[(5.0, 1e9)]))
        assert sim.counts["foreign"] == 2
        taken = leases(sim)
        assert len(taken[0]) == 1 and len(taken[1]) == 1, taken
        assert sorted(shard for shard, _ in +sim.ops.raises) == [0, 1], sim.ops.raises
        assert set(sim.ops.raises.values()) == {1}, sim.ops.raises
        for shard, name in enumerate((KEY[3], SECOND)):
            status = sim.status(name)
            assert status["phase"] == Phase.FAILED_OVER.value, (name, status["phase"])
            assert (status["fencingHolder"], status["fencingToken"]) == (
                taken[shard][0], token + 1)
        assert {w.token for w in result.writes_log} == {token + 1}


def test_a_slow_api_server_does_not_make_a_leader_give_its_tokens_raise_up() -> None:
    # As above, while every request takes 0.25-0.5 s (the retry period is 1 s): each
    # leader's renewals land between the read and the write of its raise unless they
    # wait for it. Before, the raise met the renewal's newer resourceVersion and was
    # given up with the plan it was for (the invariant "a raise of the token given up
    # on a Lease still ours"), again at every reconcile while the host stayed loaded.
    for seed in range(10):
        sim, result = simulate(sharded(seed, foreign=25, outages=[(5.0, 1e9)],
                                       slow=(0.0, 30.0, 0.5)))
        assert sorted(shard for shard, _ in +sim.ops.raises) == [0, 1], sim.ops.raises
        assert set(sim.ops.raises.values()) == {1}, sim.ops.raises
        for name in (KEY[3], SECOND):
            assert sim.status(name)["phase"] == Phase.FAILED_OVER.value, name
        assert {w.token for w in result.writes_log} == {26}


def test_an_unsharded_deployment_beside_the_shards_never_acts_with_them() -> None:
    # The deployment before sharding still runs beside the two shards (three replica
    # groups, all started at once, claim each plan). The group that took its Lease later
    # sees the other's and yields: one deployment acts on every plan from the first
    # write on (every world write and status by one of its holders), the invariant "two
    # deployments act on one plan" and the at-end checks (the record and the world agree,
    # the status mirrors the journal) hold, and the yielding replicas are not ready and
    # say why. Before, both acted, each outbidding the other once, which could leave a
    # run half done between them.
    for seed in range(4):
        sim, result = simulate(sharded(seed, rival=True, outages=[(2.0, 1e9)]))
        unsharded = len(sim.shards) - 1  # the third group's shard index
        acting = {w.holder for w in result.writes_log} | {
            (obj.get("status") or {}).get("fencingHolder")
            for _, _, key, obj, _ in sim.cluster.log if key[1] == PLURAL} - {None}
        groups = {p.shard == unsharded for p in sim.processes if p.holder in acting}
        assert len(groups) == 1, (seed, acting)
        yielding = [p for p in sim.processes if p.op is not None and p.op.elector.rival]
        assert {p.shard == unsharded for p in yielding} == {not groups.pop()}, seed
        for p in yielding:
            assert p.op is not None
            with pytest.raises(RuntimeError, match="does not act on plans: lease "):
                p.op.require_synced()

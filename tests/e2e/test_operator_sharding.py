"""Issue 20, sharding: two shards x two replicas of `failoverctl operator --shard N/2`
against the real kube-apiserver, under the shipped RBAC.

- Each plan is reconciled by exactly one replica, the one leading its shard: its status
  (every write, as a watch sees them) carries that replica as `fencingHolder`, its
  finalizer is added, and no other replica's journal has a record of it. A plan labelled
  `failover.example.io/shard` is in the shard the label names, whatever its hash says.
- Each shard elects its leader on its own Lease; killing (SIGKILL) one shard's leader
  moves that shard, and only that shard, to its other replica, which goes on reconciling
  it (a fault in one of its plans is failed over), while the other shard keeps its
  leader, its Lease untouched and its plans' statuses written by that leader alone.
"""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal
from controller.kube import Kube, KubeError
from controller.sharding import SHARD_LABEL, HashShard, lease_name
from tests.e2e.test_operator import LEASE, Replica, delete, get, names, plan_body, until

SHARDS = 2


def _holders(admin: Kube, ns: str, seen: dict[str, set[str]], stop: threading.Event) -> None:
    """Every `fencingHolder` the API server stored in each plan's status (a watch misses
    no write)."""
    rv = admin.list(GROUP, VERSION, ns, PLURAL).resource_version
    while not stop.is_set():
        try:
            for ev in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                  timeout_seconds=1):
                rv = ev.resource_version or rv
                holder = (ev.object.get("status") or {}).get("fencingHolder")
                if holder:
                    seen[ev.object["metadata"]["name"]].add(holder)
        except (KubeError, ConnectionError):  # a slow answer on a loaded host: watch again
            continue


def _recorded(replica: Replica, plan: str) -> bool:
    """Whether the replica's journal has a record of the plan (bound when reconciled)."""
    if not replica.journal.exists():
        return False
    journal = Journal(replica.journal)
    try:
        return journal.plan_uid(plan) is not None
    finally:
        journal.close()


def _plans(ns: str) -> dict[str, int]:
    """Two plans per shard by the hash, and one the label puts in shard 1 whose hash says
    shard 0: name -> its shard."""
    by_hash: dict[int, list[str]] = collections.defaultdict(list)
    i = 0
    while min((len(by_hash[s]) for s in range(SHARDS)), default=0) < 3:
        name = f"sharded-{i}"
        by_hash[HashShard(0, SHARDS).of(ns, name, {})].append(name)
        i += 1
    plans = {name: shard for shard in range(SHARDS) for name in by_hash[shard][:2]}
    plans[by_hash[0][2]] = 1  # labelled below
    return plans


def test_two_shards_each_plan_has_one_leader_and_a_dead_leader_moves_only_its_shard(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns = kube.kube("admin"), kube.namespace
    for left in names(admin, ns):  # earlier tests' plans in the session's API server
        admin.patch(GROUP, VERSION, ns, PLURAL, left, {"metadata": {"finalizers": []}})
        delete(kube, left)
    until("no earlier plan left", lambda: not names(admin, ns))
    plans = _plans(ns)
    labelled = next(name for name, shard in plans.items()
                    if HashShard(0, SHARDS).of(ns, name, {}) != shard)
    for name in plans:
        body = plan_body(name, tmp_path / f"{name}.json")
        if name == labelled:
            body["metadata"]["labels"] = {SHARD_LABEL: "1"}
        admin.create(GROUP, VERSION, ns, PLURAL, body)
    seen: dict[str, set[str]] = collections.defaultdict(set)
    stop = threading.Event()
    watcher = threading.Thread(target=_holders, args=(admin, ns, seen, stop), daemon=True)
    watcher.start()
    group = {shard: [replicas(f"shard{shard}-{x}", args=("--shard", f"{shard}/{SHARDS}"))
                     for x in "ab"] for shard in range(SHARDS)}
    everyone = [r for rs in group.values() for r in rs]
    logs = lambda: "\n".join(f"--- {r.identity}\n{r.output()[-3000:]}"  # noqa: E731
                             for r in everyone)
    leases = {shard: lease_name(LEASE, HashShard(shard, SHARDS)) for shard in range(SHARDS)}

    def leader(shard: int) -> Replica | None:
        lease = admin.get_lease(ns, leases[shard])
        return next((r for r in group[shard] if lease and lease.holder == r.identity), None)

    def reconciled_by(name: str, who: Replica) -> bool:
        obj = get(admin, ns, name)
        st = obj.get("status") or {}
        return (st.get("phase") == "Healthy" and st.get("fencingHolder") == who.identity
                and f"{GROUP}/finalizer" in obj["metadata"].get("finalizers", []))

    try:
        first = {shard: until(f"a leader of shard {shard}", lambda s=shard: leader(s),
                              logs=logs) for shard in range(SHARDS)}
        unsharded = admin.get_lease(ns, LEASE)  # none of ours: one Lease per shard
        assert unsharded is None or unsharded.holder not in {r.identity for r in everyone}
        for name, shard in plans.items():
            until(f"{name} reconciled by {first[shard].identity}",
                  lambda n=name, s=shard: reconciled_by(n, first[s]), logs=logs)
        for name, shard in plans.items():
            assert seen[name] == {first[shard].identity}, (name, seen[name])
            assert [r.identity for r in everyone if _recorded(r, name)] == [
                first[shard].identity], name
        kept = admin.get_lease(ns, leases[1])

        first[0].stop(signal.SIGKILL)  # shard 0's leader dies
        [heir] = [r for r in group[0] if r is not first[0]]
        until("shard 0 led by its other replica", lambda: leader(0) is heir, logs=logs)
        shard0 = [name for name, shard in plans.items() if shard == 0]
        for name in shard0:
            until(f"{name} reconciled by {heir.identity}",
                  lambda n=name: reconciled_by(n, heir), logs=logs)
        broken = shard0[0]
        testing.set_health("dc-a", False, state_file=str(tmp_path / f"{broken}.json"))
        until(f"{broken} failed over by {heir.identity}", lambda: (
            get(admin, ns, broken).get("status") or {}).get("phase") == "FailedOver",
            logs=logs)
        assert (get(admin, ns, broken)["status"]["run"]["id"]
                and seen[broken] == {first[0].identity, heir.identity})
        after = admin.get_lease(ns, leases[1])
        assert kept is not None and after is not None
        assert (after.holder, after.transitions) == (kept.holder, kept.transitions)
        for name, shard in plans.items():
            if shard == 1:
                assert reconciled_by(name, first[1])
                assert seen[name] == {first[1].identity}, (name, seen[name])
        assert not any(_recorded(r, name) for r in group[0] for name, shard in plans.items()
                       if shard == 1)
        assert not any(_recorded(r, name) for r in group[1] for name, shard in plans.items()
                       if shard == 0)
        for r in everyone:
            assert "Traceback" not in r.output(), r.output()
    finally:
        stop.set()
        watcher.join(timeout=10)
        for name in plans:  # the session's API server outlives the test: leave nothing
            admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})
            delete(kube, name)
        until("plans deleted", lambda: not set(plans) & names(admin, ns))

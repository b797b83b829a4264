"""Issue 20, sharding: two shards x two replicas of `failoverctl operator --shard N/2`
against the real kube-apiserver, under the shipped RBAC.

- Each plan is reconciled by exactly one replica, the one leading its shard: its status
  (every write, as a watch sees them) carries that replica as `fencingHolder`, its
  finalizer is added with its first run, and no other replica's journal has a record
  of it. A plan labelled `failover.example.io/shard` is in the shard the label names,
  whatever its hash says.
- Each shard elects its leader on its own Lease; killing (SIGKILL) one shard's leader
  moves that shard, and only that shard, to its other replica, which goes on reconciling
  it (a fault in one of its plans is failed over), while the other shard keeps its
  leader, its Lease untouched and its plans' statuses written by that leader alone.
- An unsharded deployment started beside the shards (as while a deployment is moved to
  sharding), among plans an earlier deployment left statuses on: the deployment that
  took its Lease later yields — not ready, saying which Lease and holder it yields to
  and what to do — so each plan has one actor throughout, whose Lease raises its token
  at most once a plan and never changes hands; when that deployment stops, the other
  takes every plan over.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal
from controller.kube import Kube, KubeError
from controller.netutil import free_port
from controller.sharding import SHARD_LABEL, HashShard, lease_name
from tests.e2e.test_operator import LEASE, Replica, delete, get, names, plan_body, until

SHARDS = 2


def _holders(admin: Kube, ns: str, seen: dict[str, list[str]], stop: threading.Event) -> None:
    """Each plan's `fencingHolder`, every time the API server stored another (a watch
    misses no write)."""
    rv = admin.list(GROUP, VERSION, ns, PLURAL).resource_version
    while not stop.is_set():
        try:
            for ev in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                  timeout_seconds=1):
                rv = ev.resource_version or rv
                holder = (ev.object.get("status") or {}).get("fencingHolder")
                name = ev.object["metadata"]["name"]
                if holder and (not seen[name] or seen[name][-1] != holder):
                    seen[name].append(holder)
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


def _leases(admin: Kube, ns: str, names: list[str],
            seen: dict[str, list[tuple[str | None, int]]], stop: threading.Event,
            rounds: list[int]) -> None:
    """Every (holder, leaseTransitions) each Lease showed, in order, polled; `rounds[0]`
    counts the polls of them all."""
    while not stop.wait(0.05):
        rounds[0] += 1
        for name in names:
            try:
                lease = admin.get_lease(ns, name)
            except (KubeError, ConnectionError):  # a slow answer on a loaded host
                continue
            if lease is not None and (not seen[name] or seen[name][-1] != (
                    lease.holder, lease.transitions)):
                seen[name].append((lease.holder, lease.transitions))


def _clear(kube: KubeServers, admin: Kube) -> None:
    """Delete every plan and Lease of the namespace: earlier tests' in the session's API
    server (their operators are stopped, but a Lease they held may still name them)."""
    for left in names(admin, kube.namespace):
        admin.patch(GROUP, VERSION, kube.namespace, PLURAL, left,
                    {"metadata": {"finalizers": []}})
        delete(kube, left)
    until("no earlier plan left", lambda: not names(admin, kube.namespace))
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{kube.namespace}/leases"
    for lease in admin.list("coordination.k8s.io", "v1", kube.namespace, "leases").items:
        status, reply = kube.request("DELETE", f"{leases}/{lease['metadata']['name']}")
        assert status in (200, 202), reply


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
    _clear(kube, admin)
    plans = _plans(ns)
    labelled = next(name for name, shard in plans.items()
                    if HashShard(0, SHARDS).of(ns, name, {}) != shard)
    for name in plans:
        body = plan_body(name, tmp_path / f"{name}.json")
        if name == labelled:
            body["metadata"]["labels"] = {SHARD_LABEL: "1"}
        admin.create(GROUP, VERSION, ns, PLURAL, body)
    seen: dict[str, list[str]] = collections.defaultdict(list)
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
        st = get(admin, ns, name).get("status") or {}
        return st.get("phase") == "Healthy" and st.get("fencingHolder") == who.identity

    try:
        first = {shard: until(f"a leader of shard {shard}", lambda s=shard: leader(s),
                              logs=logs) for shard in range(SHARDS)}
        unsharded = admin.get_lease(ns, LEASE)  # none of ours: one Lease per shard
        assert unsharded is None or unsharded.holder not in {r.identity for r in everyone}
        for name, shard in plans.items():
            until(f"{name} reconciled by {first[shard].identity}",
                  lambda n=name, s=shard: reconciled_by(n, first[s]), logs=logs)
        for name, shard in plans.items():
            assert seen[name] == [first[shard].identity], (name, seen[name])
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
        failed_over = get(admin, ns, broken)
        assert (failed_over["status"]["run"]["id"]
                and seen[broken] == [first[0].identity, heir.identity])
        assert f"{GROUP}/finalizer" in failed_over["metadata"]["finalizers"]  # (its run's)
        after = admin.get_lease(ns, leases[1])
        assert kept is not None and after is not None
        assert (after.holder, after.transitions) == (kept.holder, kept.transitions)
        for name, shard in plans.items():
            if shard == 1:
                assert reconciled_by(name, first[1])
                assert seen[name] == [first[1].identity], (name, seen[name])
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


def _ready(port: int) -> int:
    """The /readyz status code of the replica listening on `port`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",
                                    timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_unsharded_deployment_beside_the_shards_never_acts_with_them(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns = kube.kube("admin"), kube.namespace
    _clear(kube, admin)
    # two plans in shard 1 left by an unsharded deployment that has stopped (tokens 20 and
    # 7 of its Lease), and one plan of each shard that nobody has written yet
    left = {"left-20": 20, "left-7": 7}
    plans = {name: 1 for name in left}
    by_hash = {HashShard(0, SHARDS).of(ns, f"fresh-{i}", {}): f"fresh-{i}" for i in range(20)}
    plans.update({by_hash[0]: 0, by_hash[1]: 1})
    for name in plans:
        body = plan_body(name, tmp_path / f"{name}.json")
        if name in left:
            body["metadata"]["labels"] = {SHARD_LABEL: "1"}
        admin.create(GROUP, VERSION, ns, PLURAL, body)
        if name in left:
            admin.update_status(GROUP, VERSION, ns, PLURAL, name, lambda obj, t=left[name]: {
                **obj, "status": {"phase": "Healthy", "fencingToken": t,
                                  "fencingHolder": "unsharded-gone"}})
    leases = [lease_name(LEASE, HashShard(shard, SHARDS)) for shard in range(SHARDS)]
    history: dict[str, list[tuple[str | None, int]]] = collections.defaultdict(list)
    writers: dict[str, list[str]] = collections.defaultdict(list)
    stop = threading.Event()
    rounds = [0]
    watchers = [threading.Thread(target=_leases, args=(admin, ns, [*leases, LEASE], history,
                                                      stop, rounds), daemon=True),
                threading.Thread(target=_holders, args=(admin, ns, writers, stop),
                                 daemon=True)]
    for t in watchers:
        t.start()
    # an unsharded deployment started beside the shards, all at once: each claims the
    # plans; the one that took its Lease later yields to the other
    port = {f"unsharded-{x}": free_port() for x in "ab"} | {
        f"shard{shard}-{x}": free_port() for shard in range(SHARDS) for x in "ab"}
    unsharded = [replicas(f"unsharded-{x}", port[f"unsharded-{x}"]) for x in "ab"]
    sharded = [replicas(f"shard{shard}-{x}", port[f"shard{shard}-{x}"],
                        args=("--shard", f"{shard}/{SHARDS}"))
               for shard in range(SHARDS) for x in "ab"]
    everyone = [*unsharded, *sharded]
    ready = lambda r: _ready(port[r.identity])  # noqa: E731
    groups = {r.identity: group for group, rs in (("unsharded", unsharded),
                                                  ("sharded", sharded)) for r in rs}
    logs = lambda: "\n".join(f"--- {r.identity}\n{r.output()[-3000:]}"  # noqa: E731
                             for r in everyone)

    def written_by(name: str) -> str | None:
        holder: str | None = (get(admin, ns, name).get("status") or {}).get("fencingHolder")
        return holder

    def actors(name: str) -> list[str]:
        return [w for w in writers[name] if w != "unsharded-gone"]

    try:
        for name in plans:  # each plan reconciled
            until(f"{name} reconciled", lambda n=name: written_by(n) not in (
                None, "unsharded-gone"), logs=logs)
        acting = {groups[w] for name in plans for w in actors(name)}
        assert len(acting) == 1, (writers, logs())
        active = acting.pop()
        yielding = unsharded if active == "sharded" else sharded
        # from here on (starting all at once, a replica may have taken its Lease and
        # released it on seeing the other deployment's: that is how they settle), once
        # the polls have caught up with now
        since_round = rounds[0] + 1
        until("the Leases polled since", lambda: rounds[0] > since_round, logs=logs)
        settled = {lease: max(len(changes) - 1, 0) for lease, changes in history.items()}
        time.sleep(12.0)  # four Lease durations more, watched: nobody else acts
        for name in plans:
            assert len(actors(name)) == 1, (name, writers[name], logs())
        held = leases if active == "sharded" else [LEASE]
        for lease in held:  # kept by one holder; its token raised at most once a plan
            since = history[lease][settled.get(lease, 0):]
            assert len({holder for holder, _ in since}) == 1, (lease, history[lease], logs())
            assert len(since) - 1 <= len(plans), (lease, history[lease], logs())
        for r in yielding:  # not ready, and says why and what to do
            assert ready(r) == 503, r.output()
            assert "does not act on plans: lease " in r.output(), r.output()
            assert "Stop one of the two deployments" in r.output(), r.output()
        assert all(ready(r) == 200 for r in everyone if r not in yielding), logs()
        # the acting deployment stops (releasing its Leases): the other one takes over,
        # each plan by one actor after the other, never back. Its replicas are told to
        # stop all at once: one by one, a leader's sibling would take the Lease it
        # releases and act before being told in turn (a loaded host is slow to stop one)
        stopping = [r for r in everyone if r not in yielding]
        for r in stopping:
            r.proc.send_signal(signal.SIGTERM)
        for r in stopping:
            r.proc.wait(timeout=60)
        for name in plans:
            until(f"{name} taken over", lambda n=name: len(actors(n)) == 2, logs=logs)
        stop.set()
        for t in watchers:
            t.join(timeout=10)
        for name in plans:
            first, second = actors(name)
            assert (groups[first], groups[second]) == (active, groups[yielding[0].identity])
        until("the other deployment ready", lambda: any(ready(r) == 200 for r in yielding),
              logs=logs)
        for r in everyone:
            assert "Traceback" not in r.output(), r.output()
    finally:
        stop.set()
        for name in plans:  # the session's API server outlives the test: leave nothing
            admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})
            delete(kube, name)
        until("plans deleted", lambda: not set(plans) & names(admin, ns))

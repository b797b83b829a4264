"""The operator's leader fencing against the real kube-apiserver, one piece at a time.

- A leader whose API server stops answering (packets dropped, every request hangs) is
  stopped by its fence at its renew deadline — not after the client's timeouts and
  retries — while its Lease still has time to run; a refused connection within the
  deadline is ridden out, past it refused at once.
- Status writes, annotation claims and finalizer changes carry the leader's fencing token
  (the Lease's `leaseTransitions`): a writer whose token is older than the one stored is
  refused, on its re-read after a 409 too. A Lease deleted and created again restarts its
  count at 0: its holder raises its token above the stored one and goes on writing,
  while a replica that does not hold the Lease is still refused.

The split-brain test (`test_split_brain.py`) shows the same with two running operators.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.annotations import A_REQUEST
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.fencing import LostLease
from controller.journal import Journal
from controller.kube import Fencing, Kube, StaleFencingToken
from controller.operator import LeaderConfig, Operator
from tests.e2e.test_operator import plan_body
from tests.reliability.conftest import TALLY
from tests.reliability.faults import TcpProxy

CONFIG = LeaderConfig(lease_duration=3, renew_deadline=2, retry_period=0.3)


@pytest.fixture
def proxy(kube: KubeServers) -> Iterator[TcpProxy]:
    p = TcpProxy(("127.0.0.1", int(kube.url.rsplit(":", 1)[1])))
    yield p
    p.stop()


@pytest.fixture
def plan(kube: KubeServers, tmp_path: Path) -> Iterator[str]:
    admin, name = kube.kube("admin"), f"fenced-{time.monotonic_ns()}"
    admin.create(GROUP, VERSION, kube.namespace, PLURAL,
                 plan_body(name, tmp_path / "world.json"))
    yield name
    kube.request("DELETE",
                 f"/apis/{GROUP}/{VERSION}/namespaces/{kube.namespace}/{PLURAL}/{name}")


def operator(kube: KubeServers, client: Kube, tmp_path: Path, identity: str,
             lease: str) -> Operator:
    """An operator that is not running: its elector and writes are driven by the test."""
    return Operator(client, namespace=kube.namespace, identity=identity,
                    journal=Journal(tmp_path / f"{identity}.db"),
                    leader=dataclasses.replace(CONFIG, lease_name=lease))


def client(kube: KubeServers, url: str, timeout: float) -> Kube:
    return Kube.from_token(url, kube.token("controller"), ca_file=str(kube.ca_file),
                           timeout=timeout)


def test_the_fence_stops_a_leader_at_its_renew_deadline_when_the_api_hangs(
        kube: KubeServers, proxy: TcpProxy, tmp_path: Path) -> None:
    TALLY["fault_tried"] += 1
    admin, lease = kube.kube("admin"), f"hang-{time.monotonic_ns()}"
    # the client's own timeout (10 s, each request tried 3 times) is far past the deadline
    op = operator(kube, client(kube, proxy.url, 10), tmp_path, "leader", lease)
    elector = op.elector
    assert elector.round() and elector.token() == 0
    elector.fence()  # read now: ours
    held = admin.get_lease(kube.namespace, lease)
    assert held is not None and held.renew_time is not None
    expires = held.renew_time + dt.timedelta(seconds=held.duration_seconds)

    proxy.hang()
    started = time.monotonic()
    with pytest.raises(LostLease, match="renew deadline"):
        elector.fence()
    took = time.monotonic() - started
    assert took < CONFIG.renew_deadline + 0.5, f"the fence waited {took:.1f} s"
    assert dt.datetime.now(dt.UTC) < expires  # stopped while the Lease still runs
    with pytest.raises(LostLease):
        elector.token()  # nothing is written under its token any more
    later = time.monotonic()
    with pytest.raises(LostLease):
        elector.fence()  # from now on at once, without asking the API server
    assert time.monotonic() - later < 0.1
    TALLY["fault_survived"] += 1


def test_the_fence_rides_out_a_refused_read_within_the_renew_deadline_only(
        kube: KubeServers, proxy: TcpProxy, tmp_path: Path) -> None:
    TALLY["fault_tried"] += 1
    lease = f"refused-{time.monotonic_ns()}"
    op = operator(kube, client(kube, proxy.url, 2), tmp_path, "leader", lease)
    elector = op.elector
    assert elector.round()
    renewed = time.monotonic()
    proxy.cut()
    elector.fence()  # cannot read it, but renewed well within the renew deadline
    time.sleep(max(0.0, CONFIG.renew_deadline - (time.monotonic() - renewed)) + 0.05)
    with pytest.raises(LostLease, match="renew deadline"):
        elector.fence()
    TALLY["fault_survived"] += 1


def test_writes_carry_the_leaders_token_and_an_older_token_is_refused(
        kube: KubeServers, plan: str, tmp_path: Path) -> None:
    TALLY["fault_tried"] += 1
    admin, ns, lease = kube.kube("admin"), kube.namespace, f"token-{time.monotonic_ns()}"
    # the Lease is new (its count starts at 0), but the status was written under token 7:
    # by the leader of a Lease that was since deleted
    admin.patch(GROUP, VERSION, ns, PLURAL, plan, {"status": {
        "phase": "Healthy", "fencingToken": 7, "fencingHolder": "old-leader"}}, status=True)
    leader = operator(kube, kube.kube("controller"), tmp_path, "leader", lease)
    assert leader.elector.round() and leader.elector.token() == 0
    obj = admin.get(GROUP, VERSION, ns, PLURAL, plan)
    leader.writer.write(plan, obj, generation=obj["metadata"]["generation"])
    stored = admin.get(GROUP, VERSION, ns, PLURAL, plan)["status"]
    assert (stored["fencingToken"], stored["fencingHolder"]) == (8, "leader")
    held = admin.get_lease(ns, lease)
    assert held is not None and held.transitions == 8 and held.holder == "leader"
    assert leader.elector.token() == 8

    # a replica that believes it leads (a pause) under an older token: refused everywhere
    other = operator(kube, kube.kube("controller"), tmp_path, "other", lease)
    other.elector._renewed, other.elector._token = time.monotonic(), 7
    with pytest.raises(LostLease, match="held by leader, not other"):
        other.writer.write(plan, obj, generation=obj["metadata"]["generation"],
                           problems=["written by a replica that does not lead"])
    admin.patch(GROUP, VERSION, ns, PLURAL, plan, {"metadata": {"annotations": {
        A_REQUEST: "failover"}}})
    notes = admin.get(GROUP, VERSION, ns, PLURAL, plan)["metadata"]["annotations"]
    with pytest.raises(LostLease):
        other.requests.claim(plan, notes, (A_REQUEST,))
    ctl = kube.kube("controller")

    def drop(o: dict[str, Any]) -> None:
        o["metadata"]["annotations"].pop(A_REQUEST)

    with pytest.raises(StaleFencingToken, match=re.escape(
            "fencingToken is 8 (written by leader), newer than this writer's 7 (other)")):
        ctl.update(GROUP, VERSION, ns, PLURAL, plan, drop, fencing=Fencing(7, "other"))
    after = admin.get(GROUP, VERSION, ns, PLURAL, plan)
    assert after["metadata"]["annotations"][A_REQUEST] == "failover"  # still there
    assert (after["status"]["fencingToken"], after["status"]["fencingHolder"]) == (8, "leader")
    assert "conditions" in after["status"] and not any(
        c["reason"] == "InvalidPlan" for c in after["status"]["conditions"])

    # the leader itself claims it: its token is the stored one
    leader.requests.claim(plan, notes, (A_REQUEST,))
    assert A_REQUEST not in (admin.get(GROUP, VERSION, ns, PLURAL, plan)["metadata"].get(
        "annotations") or {})
    TALLY["fault_survived"] += 1


def test_a_replica_whose_clock_runs_ahead_waits_like_any_other(
        kube: KubeServers, tmp_path: Path) -> None:
    """Issue 22 item 7: expiry is judged from when this replica saw the Lease change, on
    its own monotonic clock (client-go's rule), not `renewTime + duration` against a
    wall clock: a replica 20 s ahead never takes a Lease renewed 0.3 s earlier, and takes
    it over once it has seen it unchanged for the lease duration."""
    TALLY["fault_tried"] += 1
    admin, ns, lease = kube.kube("admin"), kube.namespace, f"skew-{time.monotonic_ns()}"
    leader = operator(kube, kube.kube("controller"), tmp_path, "on-time", lease)
    ahead = kube.kube("controller", clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(
        seconds=20))
    other = operator(kube, ahead, tmp_path, "ahead", lease)
    assert leader.elector.round()
    end = time.monotonic() + CONFIG.lease_duration + 1
    while time.monotonic() < end:
        assert leader.elector.round()  # renewed every retry period
        assert not other.elector.round(), "a replica 20 s ahead took a renewed Lease"
        time.sleep(CONFIG.retry_period)
    held = admin.get_lease(ns, lease)
    assert held is not None and held.holder == "on-time" and held.transitions == 0

    # the leader stops renewing (it died): taken over one lease duration later, not before
    stopped = time.monotonic()
    while not other.elector.round():
        assert time.monotonic() - stopped < CONFIG.lease_duration + 2, "never taken over"
        time.sleep(CONFIG.retry_period)
    took = time.monotonic() - stopped
    assert took >= CONFIG.lease_duration - CONFIG.retry_period, f"taken after {took:.1f} s"
    held = admin.get_lease(ns, lease)
    assert held is not None and held.holder == "ahead" and held.transitions == 1
    TALLY["fault_survived"] += 1


def test_renewals_write_the_configured_lease_duration(kube: KubeServers,
                                                       tmp_path: Path) -> None:
    """Issue 22 item 7: a Lease last written with 300 s (an older setting) carries the
    configured duration from the holder's next renewal on."""
    admin, ns, lease = kube.kube("admin"), kube.namespace, f"duration-{time.monotonic_ns()}"
    admin.create_lease(ns, lease, holder="leader", duration_seconds=300)
    op = operator(kube, kube.kube("controller"), tmp_path, "leader", lease)
    assert op.elector.round()
    held = admin.get_lease(ns, lease)
    assert held is not None and held.holder == "leader"
    assert held.duration_seconds == CONFIG.lease_duration

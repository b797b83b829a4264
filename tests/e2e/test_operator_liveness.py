"""Issue 22 items 6 and 11 (shutdown): the operator's liveness and its stop, against the
real kube-apiserver.

- A long step neither stops the health beat (liveness says whether the controller
  works, not how long a restore takes) nor holds the only worker: another plan's run
  goes on meanwhile (an in-process `Operator` with one worker and a 2 s stale limit).
- SIGTERM while a step runs: `failoverctl operator` exits well within the pod's 30 s
  grace period, the step's work cancelled (nothing half-written, the step left running
  for the next leader) and the Lease released, so the next leader need not wait it out.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from controller import testing
from controller.api import Health
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal
from controller.operator import LeaderConfig, Operator
from tests.e2e.test_operator import LEASE, Replica, delete, get, names, plan_body, until
from tests.e2e.test_operator_lifecycle import annotate, phase, step_status, traffic


def test_a_long_step_neither_stops_the_health_beat_nor_holds_other_plans(
        kube: KubeServers, tmp_path: Path) -> None:
    admin, ns = kube.kube("admin"), kube.namespace
    slow, quick = "slow-step", "meanwhile"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(slow, tmp_path / "slow.json",
                                                       traffic_delay=8.0))
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(quick, tmp_path / "quick.json"))
    health = Health(stale_after=2.0, ready_check=lambda: None)
    journal = Journal(tmp_path / "solo.db")
    op = Operator(kube.kube("controller"), namespace=ns, journal=journal, identity="solo",
                  leader=LeaderConfig(lease_name=f"liveness-{time.monotonic_ns()}",
                                      lease_duration=3, renew_deadline=2, retry_period=0.3),
                  tick=0.2, resync=30, workers=1, beat=health.beat)
    stop = threading.Event()
    runner = threading.Thread(target=op.run, args=(stop,), daemon=True)
    runner.start()
    try:
        until("both Healthy", lambda: phase(admin, ns, slow) == "Healthy"
              and phase(admin, ns, quick) == "Healthy")
        testing.set_health("dc-a", False, state_file=str(tmp_path / "slow.json"))
        until("the slow step running", lambda: step_status(
            get(admin, ns, slow), "redirect-traffic") == "running")
        began = time.monotonic()
        annotate(admin, ns, quick, {f"{GROUP}/request": "failover",
                                    f"{GROUP}/requested-by": "alice"})
        dead: list[str] = []
        quick_done: float | None = None
        while step_status(get(admin, ns, slow), "redirect-traffic") == "running":
            ok, why = health.alive()
            if not ok:
                dead.append(f"{time.monotonic() - began:.1f} s: {why}")
            if quick_done is None and phase(admin, ns, quick) == "FailedOver":
                quick_done = time.monotonic() - began
            assert time.monotonic() - began < 60, "the slow step never finished"
            time.sleep(0.2)
        slow_took = time.monotonic() - began
        assert not dead, f"/healthz would have failed during a {slow_took:.0f} s step: {dead}"
        assert quick_done is not None, (
            f"the other plan waited for the {slow_took:.0f} s step to end")
        until("the slow plan FailedOver", lambda: phase(admin, ns, slow) == "FailedOver")
    finally:
        stop.set()
        runner.join(timeout=30)
        journal.close()
    for plan in (slow, quick):  # no operator runs any more: its finalizer goes by hand
        admin.patch(GROUP, VERSION, ns, PLURAL, plan, {"metadata": {"finalizers": []}})
        delete(kube, plan)
    until("plans deleted", lambda: not {slow, quick} & names(admin, ns))


def test_sigterm_mid_step_stops_within_the_grace_period_and_releases_the_lease(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "long-step"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state, traffic_delay=40.0))
    # the shipped leader-election timings (15 s / 10 s / 2 s), as in the Deployment
    replica = replicas("replica-a", args=("--lease-duration", "15", "--renew-deadline", "10",
                                          "--retry-period", "2"))
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=replica.output)
    held = admin.get_lease(ns, LEASE)
    assert held is not None and held.holder == replica.identity
    testing.set_health("dc-a", False, state_file=str(state))
    until("the long step running", lambda: step_status(
        get(admin, ns, name), "redirect-traffic") == "running", logs=replica.output)
    began = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    replica.proc.wait(timeout=60)
    took = time.monotonic() - began
    assert took < 8, f"SIGTERM took {took:.1f} s (the pod's grace period is 30 s)\n" \
                     f"{replica.output()}"
    lease = admin.get_lease(ns, LEASE)
    assert lease is not None and lease.holder is None, lease  # released for the next one
    assert traffic(name, state) == {"dc-a": 100, "dc-b": 0}  # cancelled before its write
    assert step_status(get(admin, ns, name), "redirect-traffic") == "running"
    assert "Traceback" not in replica.output()
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})  # by hand
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns))

"""The operator against a real kube-apiserver + etcd, running as `failoverctl operator`
subprocesses under the project's RBAC (the `controller` identity of manifests/deploy).

The plan's backends are the in-memory fakes with their state in a shared file, so the
test breaks the probed service from outside and reads the world back; everything
Kubernetes — watch, status subresource, Events, Lease, finalizer, schema validation —
is the real API server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.drill.servers.postgres import free_port
from controller.kube import Invalid, Kube, KubeError
from tests.e2e.test_cli import EXAMPLE, ROOT

LEASE = "failover-controller"


def plan_body(name: str, state: Path, *, traffic_delay: float = 0.0) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for backend in data["spec"]["backends"]:
        backend["options"]["stateFile"] = str(state)
        backend["options"]["key"] = f"{name}-{backend['options']['key']}"
    for service in data["spec"]["services"]:
        for probe in service["probes"]:
            probe["options"]["stateFile"] = str(state)
            probe["options"]["traffic"] = f"{name}-{probe['options']['traffic']}"
    data["spec"]["backends"][0]["options"]["delay"] = traffic_delay
    data["metadata"] = {"name": name}
    return data


class Replica:
    def __init__(self, kube: KubeServers, tmp: Path, identity: str, listen: int | None = None):
        self.identity = identity
        self.log = tmp / f"{identity}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--journal", str(tmp / f"{identity}.db"),
             "operator", "--namespace", kube.namespace,
             "--kubeconfig", str(kube.kubeconfig("controller")), "--identity", identity,
             "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3",
             "--resync", "30", *(["--listen", f"127.0.0.1:{listen}"] if listen else [])],
            cwd=ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "FAILOVER_TICK": "0.2"})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def replicas(kube: KubeServers, tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    started: list[Replica] = []

    def start(identity: str, listen: int | None = None) -> Replica:
        started.append(Replica(kube, tmp_path, identity, listen))
        return started[-1]

    yield start
    for r in started:
        r.stop(signal.SIGKILL if r.proc.poll() is None else signal.SIGTERM)


def until(what: str, fn: Callable[[], Any], timeout: float = 120.0,
          logs: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def get(admin: Kube, ns: str, name: str) -> dict[str, Any]:
    return admin.get(GROUP, VERSION, ns, PLURAL, name)


def phases_seen(admin: Kube, ns: str, name: str, rv: str, out: list[str],
                stop: threading.Event) -> None:
    """Every status phase the API server stored, in order (a watch misses none)."""
    while not stop.is_set():
        try:
            for ev in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                  timeout_seconds=1, field_selector=f"metadata.name={name}"):
                rv = ev.resource_version or rv
                phase = (ev.object.get("status") or {}).get("phase")
                if phase and (not out or out[-1] != phase):
                    out.append(phase)
                if stop.is_set():
                    return
        except (KubeError, ConnectionError):  # a slow answer on a loaded host: watch again
            continue


def names(admin: Kube, ns: str) -> set[str]:
    return {o["metadata"]["name"] for o in admin.list(GROUP, VERSION, ns, PLURAL).items}


def delete(kube: KubeServers, name: str) -> None:
    status, reply = kube.request(
        "DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{kube.namespace}/{PLURAL}/{name}")
    assert status in (200, 202), reply


def events_of(kube: KubeServers, name: str) -> list[dict[str, Any]]:
    status, reply = kube.request("GET", f"/api/v1/namespaces/{kube.namespace}/events")
    assert status == 200, reply
    return [e for e in reply["items"] if e["involvedObject"].get("name") == name]


def test_operator_fails_over_with_status_events_and_requests(
        kube: KubeServers, replicas: Callable[[str], Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "shop"
    state = tmp_path / "world.json"
    created = admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state,
                                                                  traffic_delay=0.5))
    port = free_port()
    replica = replicas("replica-a", port)
    healthy = until("Healthy status and finalizer", lambda: (
        (o := get(admin, ns, name)).get("status", {}).get("phase") == "Healthy"
        and o["metadata"].get("finalizers") and o), logs=replica.output)
    assert healthy["status"]["conditions"][0] == {**healthy["status"]["conditions"][0],
                                                  "type": "Ready", "status": "True"}
    for path, expect in (("/healthz", r"last reconcile"), ("/readyz", r"ready"),
                         ("/metrics", r'failover_plan_phase\{phase="\w+",plan="shop"\} 1\.0')):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            body = reply.read().decode()
            assert reply.status == 200 and re.search(expect, body), (path, body[-2000:])

    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=phases_seen, args=(
        admin, ns, name, created["metadata"]["resourceVersion"], seen, stop), daemon=True)
    watcher.start()
    testing.set_health("dc-a", False, state_file=str(state))
    done = until("FailedOver", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "FailedOver" and o, logs=replica.output)
    stop.set()
    watcher.join(timeout=10)
    order = [p for p in seen if p in ("Tripped", "FailingOver", "FailedOver")]
    assert order == ["Tripped", "FailingOver", "FailedOver"], seen

    st = done["status"]
    assert st["activeSite"] == "dc-b" and st["level"] == 1
    assert "tripped" in st["lastDecision"] and st["lastDecisionTime"]
    steps = {s["name"]: s for s in st["run"]["steps"]}
    assert [s["status"] for s in steps.values()] == ["succeeded"] * 4
    assert steps["redirect-traffic"]["elapsedSeconds"] >= 0.5
    assert steps["redirect-traffic"]["targetSeconds"] == 3600 and steps[
        "redirect-traffic"]["met"] is True
    assert steps["redirect-traffic"]["evidence"]["before"] == {"dc-a": 100, "dc-b": 0}
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == {"Ready": "True", "Tripped": "True", "FailingOver": "False",
                          "FailedOver": "True", "Degraded": "False"}
    reasons = [e["reason"] for e in events_of(kube, name)]
    assert "Decision" in reasons and reasons.count("StepSucceeded") == 4, reasons
    assert all(e["source"]["component"] == "failover-controller"
               for e in events_of(kube, name))

    # a failback requested by annotation (what `kubectl annotate` does), with its requester
    testing.set_health("dc-a", True, state_file=str(state))
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {
        f"{GROUP}/request": "failback", f"{GROUP}/reason": "dc-a repaired",
        f"{GROUP}/requested-by": "alice"}}})
    back = until("failed back", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "Healthy" and o["status"]["run"]["kind"] == "failback" and o,
        logs=replica.output)
    assert back["status"]["run"]["requestedBy"] == "alice"
    assert back["status"]["activeSite"] == "dc-a"
    assert f"{GROUP}/request" not in (back["metadata"].get("annotations") or {})
    assert testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
        key=f"{name}-edge", stateFile=str(state))).current() == {"dc-a": 100, "dc-b": 0}

    # the schema rejects what it can see; the controller explains what it cannot
    bad = plan_body("bad-floor", state)
    bad["spec"]["trigger"]["availabilityFloor"] = 170
    with pytest.raises(Invalid, match="availabilityFloor"):
        admin.create(GROUP, VERSION, ns, PLURAL, bad)
    wrong = plan_body("wrong-backend", state)
    wrong["spec"]["steps"][1]["backend"] = "no-such-edge"
    admin.create(GROUP, VERSION, ns, PLURAL, wrong)
    ready = until("InvalidPlan condition", lambda: next((
        c for c in (get(admin, ns, "wrong-backend").get("status") or {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "False"), None), logs=replica.output)
    assert ready["reason"] == "InvalidPlan" and "no-such-edge" in ready["message"]

    # deleting: the finalizer is released by the running operator
    for plan in (name, "wrong-backend"):
        delete(kube, plan)
    until("plans deleted", lambda: not {name, "wrong-backend"} & names(admin, ns),
          logs=replica.output)
    replica.stop()
    assert "Traceback" not in replica.output()


def test_two_replicas_one_acts_and_the_other_finishes_after_the_leader_dies(
        kube: KubeServers, replicas: Callable[[str], Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "payments"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state, traffic_delay=4.0))
    a, b = replicas("replica-a"), replicas("replica-b")
    both = lambda: a.output() + "\n----\n" + b.output()  # noqa: E731
    until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
        "phase") == "Healthy", logs=both)
    leader = until("a leader", lambda: (lease := admin.get_lease(ns, LEASE)) and lease.holder,
                   logs=both)
    first, second = (a, b) if leader == "replica-a" else (b, a)

    testing.set_health("dc-a", False, state_file=str(state))
    until("redirect-traffic running", lambda: any(
        s["name"] == "redirect-traffic" and s["status"] == "running"
        for s in ((get(admin, ns, name).get("status") or {}).get("run") or {}).get(
            "steps", [])), logs=both)
    first.stop(signal.SIGKILL)
    done = until("FailedOver by the other replica", lambda: (
        o := get(admin, ns, name))["status"].get("phase") == "FailedOver" and o,
        timeout=90, logs=both)
    assert admin.get_lease(ns, LEASE).holder == second.identity  # type: ignore[union-attr]
    steps = {s["name"]: s for s in done["status"]["run"]["steps"]}
    assert all(s["status"] == "succeeded" for s in steps.values()), steps
    assert steps["redirect-traffic"]["evidence"]["before"] == {"dc-a": 100, "dc-b": 0}

    # the step the dead leader finished was not repeated: one incident notice, not two
    sent = testing.FakeNotifier(testing.FakeNotifier.Options(
        key=f"{name}-im", stateFile=str(state))).sent()
    incident = [m for m in sent if "failing over to dc-b" in m["status"]]
    assert len(incident) == 1, json.dumps(sent, indent=1)
    assert "adopted run" in second.output()

    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=both)

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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers, kubectl_path
from controller.kube import Invalid, Kube, KubeError
from controller.model import DecisionState
from controller.netutil import free_port
from controller.operator_deletion import FINALIZER
from tests.e2e.test_cli import EXAMPLE, ROOT
from tests.unit.test_status_policy import CAMEL, keys, sample_lists

LEASE = "failover-controller"


def plan_body(name: str, state: Path, *, traffic_delay: float = 0.0) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for backend in data["spec"]["backends"]:
        backend["options"]["stateFile"] = str(state)
        backend["options"]["key"] = f"{name}-{backend['options']['key']}"
    for service in data["spec"]["services"]:
        # explicit: the schema's default (5s) would be longer than the 200ms interval
        service.setdefault("timeout", service.get("interval", "10s"))
        for probe in service["probes"]:
            probe["options"]["stateFile"] = str(state)
            probe["options"]["traffic"] = f"{name}-{probe['options']['traffic']}"
    data["spec"]["backends"][0]["options"]["delay"] = traffic_delay
    data["metadata"] = {"name": name}
    return data


# `python -m controller` that writes every thread's stack to its log on SIGUSR1
DUMPABLE = ("import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1); "
            "runpy.run_module('controller', run_name='__main__', alter_sys=True)")


class Replica:
    """`failoverctl operator` as a subprocess, as the controller's ServiceAccount (or
    through `kubeconfig`, e.g. a fault proxy's), with short leader-election times."""

    def __init__(self, kube: KubeServers, tmp: Path, identity: str, listen: int | None = None,
                 *, kubeconfig: Path | None = None, args: tuple[str, ...] = ()):
        self.identity = identity
        self.log = tmp / f"{identity}.log"
        self.journal = tmp / f"{identity}.db"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DUMPABLE, "--journal", str(self.journal),
             "operator", "--namespace", kube.namespace,
             "--kubeconfig", str(kubeconfig or kube.kubeconfig("controller")),
             "--identity", identity,
             "--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3",
             "--resync", "30", *(["--listen", f"127.0.0.1:{listen}"] if listen else []),
             *args],
            cwd=ROOT, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, "FAILOVER_TICK": "0.2"})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text()

    def stacks(self) -> str:
        """Every thread's stack, written into the log by the operator itself (SIGUSR1),
        then the log's last lines: what a test that timed out shows of a stuck operator."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        return "\n".join(self.output().splitlines()[-400:])


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


def kubectl(kube: KubeServers, *args: str) -> str:
    """What `kubectl ARGS` prints as the admin (empty when it fails)."""
    out = subprocess.run([kubectl_path(), "--kubeconfig", str(kube.kubeconfig("admin")),
                          "-n", kube.namespace, *args], capture_output=True, text=True,
                         timeout=30)
    return out.stdout if out.returncode == 0 else ""


def status_reads_well(kube: KubeServers, name: str, st: dict[str, Any]) -> None:
    """Issue 19 item 7: the status holds what the policy observes, in camelCase, never its
    probe samples (they stay in the journal), and reads well in `kubectl explain`,
    `kubectl describe` and `kubectl get -o wide`."""
    assert not list(sample_lists(st)), json.dumps(st)
    fields = [k for p, k in keys(st) if p in ("", ".conditions") or p.startswith(".policy")]
    assert fields and [k for k in fields if not CAMEL.match(k)] == [], fields
    seen = st["policy"]
    assert seen["decided"] in {d.value for d in DecisionState} and seen["detectedAt"]
    assert set(seen["services"]) == {"web", "api", "hotline"} and len(json.dumps(seen)) < 2048
    for service in seen["services"].values():
        assert {"available", "availability", "probes", "consecutiveFailures",
                "failingSince"} <= set(service)
    explained = until("kubectl explain fop.status.policy", lambda: kubectl(
        kube, "explain", "fop.status.policy"))
    assert "samples" in explained and all(
        field in explained for field in ("servicesDown", "services", "decided")), explained
    described = kubectl(kube, "describe", "fop", name).splitlines()
    start = described.index("  Policy:")
    end = next(i for i, line in enumerate(described[start + 1:], start + 1)
               if len(line) - len(line.lstrip()) <= 2)
    policy = "\n".join(described[start:end])
    assert "Decided:" in policy and "Consecutive Failures:" in policy, policy
    assert end - start < 40, policy  # a line per field, none per probe sample
    header, row = kubectl(kube, "get", "fop", name, "-o", "wide").splitlines()
    assert header.split()[-4:] == ["DECISION", "RUN", "PROGRESS", "AGE"], header
    assert st["run"]["id"] in row and "4/4 steps" in row, row


def test_operator_fails_over_with_status_events_and_requests(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "shop"
    state = tmp_path / "world.json"
    created = admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state,
                                                                  traffic_delay=0.5))
    port = free_port()
    replica = replicas("replica-a", port)
    healthy = until("Healthy status", lambda: (
        (o := get(admin, ns, name)).get("status", {}).get("phase") == "Healthy"
        and o), logs=replica.output)
    assert not healthy["metadata"].get("finalizers")  # never ran: nothing holds it
    assert healthy["status"]["conditions"][0] == {**healthy["status"]["conditions"][0],
                                                  "type": "Ready", "status": "True"}
    def served(path: str, expect: str) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status == 200 and bool(re.search(expect, reply.read().decode()))

    # the status can say Healthy before the first decision; the gauges follow that decision
    for path, expect in (("/healthz", r"last reconcile"), ("/readyz", r"ready"),
                         ("/metrics", r'failover_plan_phase\{phase="\w+",plan="shop"\} 1\.0')):
        until(f"{path} serving {expect}", lambda p=path, e=expect: served(p, e),
              logs=replica.output)

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
    assert done["metadata"]["finalizers"] == [FINALIZER]  # placed with its first run
    assert st["activeSite"] == "dc-b" and st["level"] == 1
    status_reads_well(kube, name, st)
    assert "tripped" in st["lastDecision"] and st["lastDecisionTime"]
    steps = {s["name"]: s for s in st["run"]["steps"]}
    assert [s["status"] for s in steps.values()] == ["succeeded"] * 4
    assert steps["redirect-traffic"]["elapsedSeconds"] >= 0.5
    assert steps["redirect-traffic"]["targetSeconds"] == 3600 and steps[
        "redirect-traffic"]["met"] is True
    assert steps["redirect-traffic"]["evidence"]["before"] == {"dc-a": 100, "dc-b": 0}
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions == {"Ready": "True", "Tripped": "True", "Requested": "False",
                          "FailingOver": "False", "FailedOver": "True", "Degraded": "False",
                          "SpecApplied": "True"}
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

    # deleting: the finalizer is released by the running operator (the invalid plan,
    # which never ran, has none)
    for plan in (name, "wrong-backend"):
        delete(kube, plan)
    until("plans deleted", lambda: not {name, "wrong-backend"} & names(admin, ns),
          logs=replica.output)
    replica.stop()
    assert "Traceback" not in replica.output()


def test_two_replicas_one_acts_and_the_other_finishes_after_the_leader_dies(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
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

    # the trip went on under the new leader, read back from the status (not from the
    # dead leader's samples): the outage it still saw was no second trip
    trips = [e["message"] for e in events_of(kube, name)
             if e["reason"] == "Decision" and e["message"].startswith("tripped")]
    assert len(trips) == 1, trips

    # the step the dead leader finished was not repeated: one incident notice, not two
    sent = testing.FakeNotifier(testing.FakeNotifier.Options(
        key=f"{name}-im", stateFile=str(state))).sent()
    incident = [m for m in sent if "failing over to dc-b" in m["status"]]
    assert len(incident) == 1, json.dumps(sent, indent=1)
    assert "adopted run" in second.output()

    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=both)


def test_bad_done_and_approve_annotations_are_removed_with_a_warning_event(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Issue 14 item 10: an annotation the operator cannot act on (an unknown run or step,
    a step that is not a human step or needs no approval, a malformed value) is removed
    and answered with a Warning Event naming the annotation, its value and what is
    allowed — not consumed with a traceback and no word."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "bad-notes"
    state = tmp_path / "world.json"
    body = plan_body(name, state)
    body["spec"]["steps"].insert(0, {"name": "call-bank", "action": "manual",
                                     "params": {"instructions": "call the bank"}})
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    replica = replicas("replica-a")
    until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
        "phase") == "Healthy", logs=replica.output)
    testing.set_health("dc-a", False, state_file=str(state))
    waiting = until("the run waits for a person", lambda: (o := get(admin, ns, name))[
        "status"].get("phase") == "AwaitingApproval" and o, logs=replica.output)
    run = waiting["status"]["run"]["id"]
    done, approve = f"{GROUP}/done", f"{GROUP}/approve"

    cases = [
        (done, "call-bank", "DoneRefused", ["malformed", "RUN:STEP", f"active run is {run}"]),
        (done, "no-such-run:call-bank", "DoneRefused",
         [f"plan {name} has no run 'no-such-run'", f"active run is {run}"]),
        (done, f"{run}:no-such-step", "DoneRefused",
         ["has no step 'no-such-step'", f"human steps of run {run}: call-bank"]),
        (done, f"{run}:redirect-traffic", "DoneRefused",
         ["redirect-traffic", "is not a human step", f"human steps of run {run}: call-bank"]),
        (approve, "no-such-run", "ApprovalRefused",
         [f"plan {name} has no run 'no-such-run'", "RUN:STEP", f"active run is {run}"]),
        (approve, f"{run}:call-bank", "ApprovalRefused",
         ["does not wait for an approval", f"steps of run {run} that wait for an approval: "
          f"none (or approve the run itself: {run})"]),
    ]
    def refusal(reason: str, key: str, value: str) -> dict[str, Any] | None:
        head = f"annotation {key}={value!r} removed and not acted on"
        return next((e for e in events_of(kube, name)
                     if e["reason"] == reason and head in e["message"]), None)

    def annotations() -> dict[str, str]:
        return dict(get(admin, ns, name)["metadata"].get("annotations") or {})

    for key, value, reason, says in cases:
        admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {
            key: value, f"{key}d-by" if key == approve else f"{key}-by": "alice"}}})
        event = until(f"a {reason} Event for {key}={value}",
                      partial(refusal, reason, key, value), logs=replica.output)
        assert event["type"] == "Warning"
        assert all(s in event["message"] for s in says), (says, event["message"])
        until(f"{key} removed", lambda k=key: not [n for n in annotations()  # and its -by
                                                  if n.startswith(k)], logs=replica.output)
        steps = {s["name"]: s["status"] for s in get(admin, ns, name)["status"]["run"]["steps"]}
        assert steps["call-bank"] == "awaiting-person" and steps["redirect-traffic"] == "pending"

    # the right value still works
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": {
        done: f"{run}:call-bank", f"{done}-by": "alice"}}})
    finished = until("FailedOver", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "FailedOver" and o, logs=replica.output)
    bank = next(s for s in finished["status"]["run"]["steps"] if s["name"] == "call-bank")
    assert bank["status"] == "succeeded" and bank["approvedBy"] == "alice"
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=replica.output)
    replica.stop()
    assert "Traceback" not in replica.output()

"""Issue 22: the plan's life around a run, on the real kube-apiserver with `failoverctl
operator` subprocesses under the shipped RBAC (see `test_operator.py`).

- A plan deleted mid-run keeps its finalizer across a leader change: the new leader
  adopts the run from the status and finishes it before the plan goes (item 1).
- A deleting plan still takes `done`/`approve`, and says once (one Event, counted) that
  its deletion waits for the run (item 5).
- A plan deleted and created again under the same name starts afresh: no old run, no
  old phase, the new spec's steps (item 3).
- A malformed request (a level outside 1-4, a non-ASCII digit, an unknown kind) is
  refused with a Warning Event naming the annotation and the allowed values, and removed
  without a run (item 9).
- `kubectl get fop` says the truth for a valid, an invalid and a deleting plan (item 10).
- An edit of the sites or backends while failed over is held (SpecApplied False), so the
  failback reverts the object the failover changed (item 4).
- An outage that goes on writes the status and Events on a change of meaning, not on
  every change of a counter (item 8).
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers, kubectl_path
from controller.kube import Kube, KubeError
from controller.operator_deletion import FINALIZER
from tests.e2e.test_operator import (
    LEASE,
    Replica,
    delete,
    events_of,
    get,
    names,
    plan_body,
    until,
)

DONE, DONE_BY = f"{GROUP}/done", f"{GROUP}/done-by"
REQUEST, LEVEL, BY = f"{GROUP}/request", f"{GROUP}/level", f"{GROUP}/requested-by"


def human_plan(name: str, state: Path) -> dict[str, Any]:
    """The example plan with a human step after the traffic step: the run moves traffic
    to dc-b, then waits for a person."""
    body = plan_body(name, state)
    body["spec"]["steps"].insert(2, {"name": "call-bank", "action": "manual",
                                     "params": {"instructions": "call the bank"}})
    return body


def traffic(name: str, state: Path) -> dict[str, int]:
    return testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
        key=f"{name}-edge", stateFile=str(state), weights={"dc-a": 100, "dc-b": 0})).current()


def dns(name: str, state: Path) -> list[str]:
    provider = testing.FakeDnsProvider(testing.FakeDnsProvider.Options(
        key=f"{name}-zone", stateFile=str(state),
        records=[{"name": "www.example.test.", "type": "A", "ttl": 60,
                  "values": ["192.0.2.10"]}]))
    return [v for r in provider.records() for v in r.values]


def step_status(obj: dict[str, Any], step: str) -> str | None:
    run = (obj.get("status") or {}).get("run") or {}
    return next((s["status"] for s in run.get("steps", []) if s["name"] == step), None)


def phase(admin: Kube, ns: str, name: str) -> str | None:
    return (get(admin, ns, name).get("status") or {}).get("phase")


def annotate(admin: Kube, ns: str, name: str, notes: dict[str, str]) -> None:
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": notes}})


def waiting_for_a_person(admin: Kube, ns: str, name: str, state: Path) -> dict[str, Any]:
    """Wait until the run has moved traffic to dc-b and waits at the human step."""
    return until("traffic on dc-b and the human step open", lambda: (
        (o := get(admin, ns, name)) and step_status(o, "call-bank") == "awaiting-person"
        and traffic(name, state).get("dc-b") == 100 and o))


def test_a_plan_deleted_mid_run_keeps_its_finalizer_across_a_leader_change(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 1: the new leader holds no runtime for the plan; it adopts the run from the
    status and keeps the finalizer until the run has finished."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "held"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, human_plan(name, state))
    a, b = replicas("replica-a"), replicas("replica-b")
    both = lambda: a.output() + "\n----\n" + b.output()  # noqa: E731
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=both)
    leader = until("a leader", lambda: (lease := admin.get_lease(ns, LEASE)) and lease.holder,
                   logs=both)
    first, second = (a, b) if leader == a.identity else (b, a)
    testing.set_health("dc-a", False, state_file=str(state))
    run = waiting_for_a_person(admin, ns, name, state)["status"]["run"]["id"]

    delete(kube, name)
    until("deletion held by the finalizer", lambda: get(admin, ns, name)["metadata"].get(
        "deletionTimestamp"), logs=both)
    first.stop(signal.SIGKILL)
    until("the other replica leads", lambda: (lease := admin.get_lease(ns, LEASE)) and
          lease.holder == second.identity, logs=both)
    for _ in range(20):  # the new leader reconciles every 0.2 s: 4 s of its cycles
        assert name in names(admin, ns), f"the new leader let the plan go mid-run\n{both()}"
        time.sleep(0.2)
    held = get(admin, ns, name)
    assert FINALIZER in held["metadata"]["finalizers"]
    assert step_status(held, "call-bank") == "awaiting-person"
    assert traffic(name, state)["dc-b"] == 100 and dns(name, state) == ["192.0.2.10"]

    # the person finishes the step: the new leader completes the run, then lets it go
    annotate(admin, ns, name, {DONE: f"{run}:call-bank", DONE_BY: "alice"})
    until("the plan removed once its run finished", lambda: name not in names(admin, ns),
          timeout=60, logs=both)
    assert dns(name, state) == ["198.51.100.10"]  # the steps after the human step ran
    assert "adopted run" in second.output()
    assert "Traceback" not in second.output()


def test_a_deleting_plan_still_takes_done_and_says_once_that_it_waits(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 5: no deadlock (the `done` on a deleting plan is read and acted on) and one
    DeletionDeferred Event, counted, not one per cycle."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "parting"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, human_plan(name, state))
    replica = replicas("replica-a")
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=replica.output)
    testing.set_health("dc-a", False, state_file=str(state))
    run = waiting_for_a_person(admin, ns, name, state)["status"]["run"]["id"]
    delete(kube, name)
    until("deletion held", lambda: get(admin, ns, name)["metadata"].get("deletionTimestamp"),
          logs=replica.output)
    time.sleep(3)  # 15 cycles of the operator
    deferred = [e for e in events_of(kube, name) if e["reason"] == "DeletionDeferred"]
    assert len(deferred) == 1, [e["message"] for e in deferred]
    assert deferred[0]["type"] == "Warning" and run in deferred[0]["message"]
    assert "call-bank" in deferred[0]["message"]

    annotate(admin, ns, name, {DONE: f"{run}:call-bank", DONE_BY: "alice"})
    until("the plan removed once its run finished", lambda: name not in names(admin, ns),
          timeout=30, logs=replica.output)
    assert dns(name, state) == ["198.51.100.10"]
    assert "Traceback" not in replica.output()


def test_a_plan_recreated_under_the_same_name_starts_afresh(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 3: the journal's record of the deleted plan is not the new plan's."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "reborn"
    old_world, new_world = tmp_path / "old.json", tmp_path / "new.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, old_world))
    replica = replicas("replica-a")
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=replica.output)
    testing.set_health("dc-a", False, state_file=str(old_world))
    old = until("FailedOver", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "FailedOver" and o, logs=replica.output)
    old_run = old["status"]["run"]["id"]
    delete(kube, name)
    until("the old plan gone", lambda: name not in names(admin, ns), logs=replica.output)

    body = plan_body(name, new_world)
    body["spec"]["steps"] = [s for s in body["spec"]["steps"] if s["name"] != "dns-cutover"]
    created = admin.create(GROUP, VERSION, ns, PLURAL, body)
    fresh = until("the new plan's first status", lambda: (
        (o := get(admin, ns, name))["metadata"]["uid"] == created["metadata"]["uid"]
        and (o.get("status") or {}).get("observedGeneration") and o), logs=replica.output)
    assert fresh["status"]["phase"] == "Healthy", fresh["status"]
    assert "run" not in fresh["status"], fresh["status"]["run"]
    assert fresh["status"].get("activeSite") in (None, "dc-a")

    testing.set_health("dc-a", False, state_file=str(new_world))
    done = until("the new plan FailedOver", lambda: (o := get(admin, ns, name))["status"].get(
        "phase") == "FailedOver" and o, logs=replica.output)
    run = done["status"]["run"]
    assert run["id"] != old_run
    assert [s["name"] for s in run["steps"]] == ["notify-incident", "redirect-traffic",
                                                 "link-test"]
    assert dns(name, new_world) == ["192.0.2.10"]  # the old plan's dns-cutover never ran
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=replica.output)
    assert "Traceback" not in replica.output()


def test_a_malformed_request_is_refused_with_an_event_and_removed(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 9: validated before it is claimed; refused with the allowed values."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "asks"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state))
    replica = replicas("replica-a")
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=replica.output)
    cases = [
        ({REQUEST: "failover", LEVEL: "0"}, LEVEL, "0", ["1, 2, 3 or 4"]),
        ({REQUEST: "failover", LEVEL: "9"}, LEVEL, "9", ["1, 2, 3 or 4"]),
        ({REQUEST: "failover", LEVEL: "²"}, LEVEL, "²", ["1, 2, 3 or 4"]),
        ({REQUEST: "failover", LEVEL: "two"}, LEVEL, "two", ["1, 2, 3 or 4"]),
        ({REQUEST: "sideways"}, REQUEST, "sideways", ["failover or failback"]),
    ]

    def refusal(key: str, value: str) -> dict[str, Any] | None:
        head = f"annotation {key}={value!r} removed and not acted on"
        return next((e for e in events_of(kube, name)
                     if e["reason"] == "BadRequest" and head in e["message"]), None)

    for notes, key, value, says in cases:
        annotate(admin, ns, name, {**notes, BY: "alice"})
        event = until(f"a BadRequest Event for {key}={value}", partial(refusal, key, value),
                      timeout=20, logs=replica.output)
        assert event["type"] == "Warning"
        assert all(s in event["message"] for s in says), (says, event["message"])
        until("the request removed", lambda: not any(
            k.startswith(REQUEST) or k in (LEVEL, BY)
            for k in get(admin, ns, name)["metadata"].get("annotations") or {}),
            logs=replica.output)
        status = get(admin, ns, name)["status"]
        assert "run" not in status and status["phase"] == "Healthy", status

    annotate(admin, ns, name, {REQUEST: "failover", LEVEL: "2", BY: "alice"})
    done = until("FailedOver on the valid request", lambda: (o := get(admin, ns, name))[
        "status"].get("phase") == "FailedOver" and o, logs=replica.output)
    assert done["status"]["level"] == 2 and done["status"]["run"]["requestedBy"] == "alice"
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=replica.output)
    assert "Traceback" not in replica.output()


def kubectl_rows(kube: KubeServers) -> dict[str, dict[str, str]]:
    """`kubectl get fop` as the admin, each row by its column headers."""
    out = subprocess.run([kubectl_path(), "--kubeconfig", str(kube.kubeconfig("admin")), "get",
                          "fop", "-n", kube.namespace], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    header, *lines = out.splitlines()
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+", header)]
    rows = {}
    for line in lines:
        cells = {}
        for i, (start, col) in enumerate(spans):
            end = spans[i + 1][0] if i + 1 < len(spans) else len(line)
            cells[col] = line[start:end].strip()
        rows[cells["NAME"]] = cells
    return rows


def test_kubectl_get_fop_tells_the_truth(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 10: PHASE Invalid for an invalid plan (it is not watched), a READY column (and
    its reason) from the Ready condition; a deleting plan is not Ready either."""
    admin, ns = kube.kube("admin"), kube.namespace
    ok, bad, going = "shown-ok", "shown-bad", "shown-going"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(ok, tmp_path / "ok.json"))
    wrong = plan_body(bad, tmp_path / "bad.json")
    wrong["spec"]["steps"][1]["backend"] = "no-such-edge"  # the schema cannot see it
    admin.create(GROUP, VERSION, ns, PLURAL, wrong)
    admin.create(GROUP, VERSION, ns, PLURAL, human_plan(going, tmp_path / "going.json"))
    replica = replicas("replica-a")
    until("the plans reconciled", lambda: phase(admin, ns, ok) == "Healthy"
          and phase(admin, ns, going) == "Healthy"
          and (get(admin, ns, bad).get("status") or {}).get("conditions"),
          logs=replica.output)
    annotate(admin, ns, going, {REQUEST: "failover", BY: "alice"})
    run = waiting_for_a_person(admin, ns, going, tmp_path / "going.json")["status"]["run"]["id"]
    delete(kube, going)

    def shown() -> dict[str, dict[str, str]] | None:
        rows = kubectl_rows(kube)
        return rows if rows.get(going, {}).get("REASON") == "Deleting" else None

    rows = until("kubectl shows the deletion", shown, timeout=20, logs=replica.output)
    assert {k: rows[ok][k] for k in ("PHASE", "READY", "REASON")} == {
        "PHASE": "Healthy", "READY": "True", "REASON": "Reconciling"}, rows[ok]
    assert {k: rows[bad][k] for k in ("PHASE", "READY", "REASON")} == {
        "PHASE": "Invalid", "READY": "False", "REASON": "InvalidPlan"}, rows[bad]
    assert {k: rows[going][k] for k in ("PHASE", "READY", "ACTIVE")} == {
        "PHASE": "AwaitingApproval", "READY": "False", "ACTIVE": "dc-a"}, rows[going]
    ready = next(c for c in get(admin, ns, going)["status"]["conditions"]
                 if c["type"] == "Ready")
    assert run in ready["message"] and "call-bank" in ready["message"], ready

    annotate(admin, ns, going, {DONE: f"{run}:call-bank", DONE_BY: "alice"})
    for plan in (ok, bad):
        delete(kube, plan)
    until("plans deleted", lambda: not {ok, bad, going} & names(admin, ns), timeout=30,
          logs=replica.output)
    assert "Traceback" not in replica.output()


def modifications(admin: Kube, ns: str, name: str, rv: str, seconds: float) -> list[str]:
    """The resourceVersions of every change of `name` stored within `seconds`."""
    seen: list[str] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            for ev in admin.watch(GROUP, VERSION, ns, PLURAL, resource_version=rv,
                                  timeout_seconds=max(1, int(left)),
                                  field_selector=f"metadata.name={name}"):
                rv = ev.resource_version or rv
                if ev.type == "MODIFIED" and time.monotonic() < end:
                    seen.append(rv)
        except (KubeError, ConnectionError):
            continue
    return seen


def test_an_ongoing_outage_writes_status_on_a_change_of_meaning_only(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 8: a degraded plan whose decision sentence counts failed probes every 0.2 s
    is written (and an Event emitted) when the meaning changes, not every reconcile."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "chatty"
    state = tmp_path / "world.json"
    body = plan_body(name, state)
    body["spec"]["trigger"]["availabilityFloor"] = 50  # one service of three down: degraded
    hotline = next(s for s in body["spec"]["services"] if s["name"] == "hotline")
    hotline["probes"][0]["options"] = {"key": f"{name}-hotline", "stateFile": str(state)}
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    replica = replicas("replica-a")
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=replica.output)
    testing.set_health(f"{name}-hotline", False, state_file=str(state))
    until("Degraded", lambda: phase(admin, ns, name) == "Degraded", logs=replica.output)
    time.sleep(1.0)
    before = get(admin, ns, name)
    decisions = sum(e.get("count", 1) for e in events_of(kube, name)
                    if e["reason"] == "Decision")
    counted: list[list[str]] = []
    watcher = threading.Thread(target=lambda: counted.append(modifications(
        admin, ns, name, before["metadata"]["resourceVersion"], 4.0)))
    watcher.start()
    watcher.join(timeout=30)
    after = get(admin, ns, name)
    assert after["status"]["phase"] == "Degraded"
    assert after["status"]["lastDecision"].startswith("degraded: hotline down"), after["status"]
    assert len(counted[0]) <= 1, f"{len(counted[0])} writes in 4 s of one unchanged outage"
    more = sum(e.get("count", 1) for e in events_of(kube, name)
               if e["reason"] == "Decision") - decisions
    assert more <= 1, f"{more} Decision Events in 4 s of one unchanged outage"
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=replica.output)
    assert "Traceback" not in replica.output()


def test_an_edit_while_failed_over_is_held_so_failback_reverts_the_right_object(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """Item 4: repointing the traffic backend while failed over is held (condition
    SpecApplied False): the failback reverts the object the failover changed — also on
    a replica that takes over meanwhile — and the edit is applied once back on dc-a."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "repointed"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state))
    a = replicas("replica-a")
    until("Healthy", lambda: phase(admin, ns, name) == "Healthy", logs=a.output)
    testing.set_health("dc-a", False, state_file=str(state))
    until("FailedOver", lambda: phase(admin, ns, name) == "FailedOver", logs=a.output)
    assert traffic(name, state) == {"dc-a": 0, "dc-b": 100}

    def repoint(obj: dict[str, Any]) -> None:
        edge = next(b for b in obj["spec"]["backends"] if b["name"] == "edge")
        edge["options"]["key"] = f"{name}-other-edge"

    edited = admin.update(GROUP, VERSION, ns, PLURAL, name, repoint)
    generation = edited["metadata"]["generation"]

    def held() -> dict[str, Any] | None:
        st = get(admin, ns, name).get("status") or {}
        cond: dict[str, Any] = next((c for c in st.get("conditions", [])
                                     if c["type"] == "SpecApplied"), {})
        return st if (st.get("observedGeneration") == generation
                      and cond.get("reason") == "HeldDuringIncident") else None

    st = until("the edit held", held, timeout=20, logs=a.output)
    assert st["appliedGeneration"] == generation - 1 and st["phase"] == "FailedOver"
    message = next(c["message"] for c in st["conditions"] if c["type"] == "SpecApplied")
    assert "sites or backends" in message and "failback" in message, message

    # another replica takes over meanwhile: it goes on with the held spec too
    a.stop()
    b = replicas("replica-b")
    until("replica-b leads", lambda: (lease := admin.get_lease(ns, LEASE)) and
          lease.holder == b.identity, logs=b.output)
    testing.set_health("dc-a", True, state_file=str(state))
    annotate(admin, ns, name, {REQUEST: "failback", BY: "alice"})
    until("failed back", lambda: (o := get(admin, ns, name))["status"].get("phase") ==
          "Healthy" and o["status"]["run"]["kind"] == "failback", logs=b.output)
    assert traffic(name, state) == {"dc-a": 100, "dc-b": 0}  # the object it changed
    other = testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
        key=f"{name}-other-edge", stateFile=str(state), weights={"dc-a": 100, "dc-b": 0}))
    assert other.writes() == []  # the new one was never touched

    def applied() -> dict[str, Any] | None:
        st = get(admin, ns, name).get("status") or {}
        cond: dict[str, Any] = next((c for c in st.get("conditions", [])
                                     if c["type"] == "SpecApplied"), {})
        return st if cond.get("status") == "True" else None

    st = until("the edit applied once back on dc-a", applied, timeout=20, logs=b.output)
    assert st["appliedGeneration"] == generation
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns), logs=b.output)
    assert "Traceback" not in a.output() + b.output()

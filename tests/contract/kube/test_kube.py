"""controller.kube against a real kube-apiserver + etcd with the project's RBAC.

Everything the controller does runs as the `controller` identity (the ServiceAccount of
manifests/deploy/rbac.yaml, bound by exactly that Role); `admin` sets the world up and
plays "someone else" editing concurrently. Concurrent edits happen inside the mutation,
between our read and our write, so the conflicts are real and deterministic. Lease times
are injected (`now=`), never slept through.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.drill.servers.kube import KubeServers
from controller.kube import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Gone,
    Kube,
    KubeConnection,
    LeaseHeld,
    LeaseLost,
    NotFound,
    Unauthorized,
    Unavailable,
    connect,
)
from controller.model import PermanentError
from controller.secret_access import role_documents
from controller.secrets import SecretRef, Secrets

ROOT = Path(__file__).resolve().parents[3]
PLAN = ("failover.example.io", "v1alpha1")
_N = itertools.count()
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_N)}"


@pytest.fixture
def admin(kube: KubeServers) -> Kube:
    return kube.kube("admin")


@pytest.fixture
def ctl(kube: KubeServers) -> Kube:
    return kube.kube("controller")


@pytest.fixture
def plan(kube: KubeServers, admin: Kube) -> dict[str, Any]:
    """A FailoverPlan (the example drill's spec) created by admin in the controller's ns."""
    doc = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
    doc["metadata"] = {"name": unique("plan"), "namespace": kube.namespace}
    return admin.create(*PLAN, kube.namespace, "failoverplans", doc)


def plan_args(kube: KubeServers, plan: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (*PLAN, kube.namespace, "failoverplans", plan["metadata"]["name"])


# --- optimistic concurrency -------------------------------------------------------------


def test_update_retries_a_conflict_and_keeps_the_concurrent_edit(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    calls = []

    def mutate(obj: dict[str, Any]) -> None:
        calls.append(obj["metadata"]["resourceVersion"])
        if len(calls) == 1:  # someone else writes between our read and our write
            admin.patch(*args, {"metadata": {"labels": {"edited-by": "someone-else"}}})
        obj["metadata"].setdefault("annotations", {})["failover.example.io/note"] = "ours"

    result = ctl.update(*args, mutate)

    assert len(calls) == 2 and calls[0] != calls[1]  # re-read after the 409
    assert ctl.conflicts == 1
    stored = admin.get(*args)
    assert stored["metadata"]["labels"] == {"edited-by": "someone-else"}  # not lost
    assert stored["metadata"]["annotations"]["failover.example.io/note"] == "ours"
    assert result["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_update_from_a_stale_copy_in_hand_rereads_and_keeps_both_edits(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    admin.patch(*args, {"metadata": {"labels": {"edited-by": "someone-else"}}})
    reads = []

    def mutate(obj: dict[str, Any]) -> None:
        reads.append(obj["metadata"]["resourceVersion"])
        obj["metadata"].setdefault("annotations", {})["failover.example.io/note"] = "ours"

    ctl.update(*args, mutate, current=plan)  # `plan` predates the admin's patch
    stored = admin.get(*args)
    assert ctl.conflicts == 1 and reads[0] == plan["metadata"]["resourceVersion"]
    assert stored["metadata"]["labels"] == {"edited-by": "someone-else"}
    assert stored["metadata"]["annotations"]["failover.example.io/note"] == "ours"


def test_update_that_changes_nothing_writes_nothing(
        kube: KubeServers, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    result = ctl.update(*args, lambda obj: obj)
    assert result["metadata"]["resourceVersion"] == plan["metadata"]["resourceVersion"]


def test_update_gives_up_after_a_bounded_number_of_conflicts(
        kube: KubeServers, admin: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    ctl = kube.kube("controller", conflict_retries=3)
    calls = []

    def mutate(obj: dict[str, Any]) -> None:
        calls.append(1)
        admin.patch(*args, {"metadata": {"labels": {"round": str(len(calls))}}})
        obj["metadata"].setdefault("labels", {})["ours"] = "yes"

    with pytest.raises(Conflict, match="still conflicting after 3") as err:
        ctl.update(*args, mutate)
    assert len(calls) == 3
    assert f"failoverplans.failover.example.io {kube.namespace}/{args[-1]}" in str(err.value)


def test_a_stale_resource_version_is_refused(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    admin.patch(*args, {"metadata": {"labels": {"moved": "on"}}})
    with pytest.raises(Conflict, match="re-read it"):
        ctl.patch(*args, {"metadata": {"labels": {"ours": "x"}}},
                  resource_version=plan["metadata"]["resourceVersion"])
    with pytest.raises(Conflict):
        ctl.replace(*args[:4], plan)


def test_update_status_retries_a_conflict_and_leaves_the_spec_alone(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    calls = []

    def mutate(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            admin.patch(*args, {"status": {"lastDecision": "someone else's"}}, status=True)
        obj["spec"]["mode"] = "manual"  # ignored: the status subresource writes status only
        return {**obj, "status": {**(obj.get("status") or {}), "phase": "Degraded"}}

    ctl.update_status(*args, mutate)
    stored = admin.get(*args)
    assert len(calls) == 2
    assert stored["status"] == {"lastDecision": "someone else's", "phase": "Degraded"}
    assert stored["spec"] == plan["spec"]


def test_objects_come_without_managed_fields_and_a_write_keeps_the_servers(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    args = plan_args(kube, plan)
    url = f"/apis/{PLAN[0]}/{PLAN[1]}/namespaces/{kube.namespace}/failoverplans/{args[-1]}"
    assert "managedFields" not in plan["metadata"]
    written = ctl.update_status(*args, lambda o: {**o, "status": {"phase": "Healthy"}})
    listed = ctl.list(*PLAN, kube.namespace, "failoverplans").items
    assert all("managedFields" not in o["metadata"] for o in [written, *listed])
    status, raw = kube.request("GET", url)
    assert status == 200
    managers = {(m["manager"], m.get("subresource", "")) for m in raw["metadata"]["managedFields"]}
    assert ("failover-controller", "status") in managers  # the status write is on record
    ctl.update(*args, lambda o: o["metadata"].setdefault("labels", {}).update(x="y"))
    _, after = kube.request("GET", url)
    assert len(after["metadata"]["managedFields"]) >= len(raw["metadata"]["managedFields"])


# --- watch ---------------------------------------------------------------------------------


def test_watch_streams_changes_after_the_listed_version(
        kube: KubeServers, admin: Kube, ctl: Kube, plan: dict[str, Any]) -> None:
    listed = ctl.list(*PLAN, kube.namespace, "failoverplans")
    assert plan["metadata"]["name"] in {o["metadata"]["name"] for o in listed.items}
    args = plan_args(kube, plan)
    admin.patch(*args, {"metadata": {"labels": {"step": "1"}}})
    admin.patch(*args, {"metadata": {"labels": {"step": "2"}}})
    seen = []
    for event in ctl.watch(*PLAN, kube.namespace, "failoverplans",
                           resource_version=listed.resource_version, timeout_seconds=30):
        if event.type == "BOOKMARK":
            continue
        seen.append((event.type, event.object["metadata"]["labels"]["step"]))
        assert "managedFields" not in event.object["metadata"]
        assert event.resource_version == event.object["metadata"]["resourceVersion"]
        if len(seen) == 2:
            break
    assert seen == [("MODIFIED", "1"), ("MODIFIED", "2")]
    assert ctl.get(*args)["metadata"]["labels"] == {"step": "2"}  # the client still works


def test_watch_from_a_version_the_server_no_longer_has_raises_gone(
        kube: KubeServers, ctl: Kube, plan: dict[str, Any]) -> None:
    # "1" predates the watch window of every resource on this server (as a compacted
    # version does on a long-running one): the server answers 410 Expired
    events = ctl.watch(*PLAN, kube.namespace, "failoverplans", resource_version="1",
                       timeout_seconds=30)
    with pytest.raises(Gone, match="410") as err:
        next(events)
    assert err.value.status == 410
    assert "list again" in str(err.value)


# --- errors ------------------------------------------------------------------------------


def test_forbidden_names_the_verb_resource_and_the_rbac_file(
        kube: KubeServers, ctl: Kube, plan: dict[str, Any]) -> None:
    with pytest.raises(Forbidden) as err:
        ctl.list(*PLAN, "default", "failoverplans")
    message = str(err.value)
    assert isinstance(err.value, PermanentError)
    assert 'grant verb "list" on resource "failoverplans" in apiGroup ' \
           '"failover.example.io" in namespace default' in message
    assert "manifests/deploy/rbac.yaml" in message
    assert "system:serviceaccount:failover-system:failover-controller" in message
    assert kube.token("controller") not in message

    doc = {**plan, "metadata": {"name": unique("plan"), "namespace": kube.namespace}}
    with pytest.raises(Forbidden, match='grant verb "create" on resource "failoverplans"'):
        ctl.create(*PLAN, kube.namespace, "failoverplans", doc)


def test_not_found_names_the_object_or_the_missing_resource_type(
        kube: KubeServers, ctl: Kube) -> None:
    with pytest.raises(NotFound, match=f"failoverplans.failover.example.io "
                       f"{kube.namespace}/absent: not found"):
        ctl.get(*PLAN, kube.namespace, "failoverplans", "absent")
    with pytest.raises(NotFound, match="CustomResourceDefinition installed"):
        ctl.get("failover.example.io", "v9", kube.namespace, "failoverplans", "absent")


def test_a_rejected_token_is_unauthorized_and_never_shown(kube: KubeServers) -> None:
    bad = "not-a-valid-token-0123456789"
    with Kube.from_token(kube.url, bad, ca_file=str(kube.ca_file)) as k, \
            pytest.raises(Unauthorized) as err:
        k.get(*PLAN, kube.namespace, "failoverplans", "x")
    assert bad not in str(err.value) and "401" in str(err.value)
    assert bad not in repr(k)


def test_no_answer_is_unavailable_and_retryable() -> None:
    from controller.netutil import free_port

    with Kube.from_token(f"https://127.0.0.1:{free_port()}", "tok", timeout=2) as k, \
            pytest.raises(Unavailable, match=r"no answer from https://127\.0\.0\.1") as err:
        k.get(*PLAN, "ns", "failoverplans", "x")
    assert isinstance(err.value, ConnectionError)  # the executor retries these
    assert not isinstance(err.value, PermanentError)


# --- connections ---------------------------------------------------------------------------


def test_connect_from_host_token_file_and_ca(kube: KubeServers) -> None:
    conn = KubeConnection.model_validate(kube.connection("controller"))
    k = connect(conn, secrets=Secrets())
    assert k.list(*PLAN, kube.namespace, "failoverplans").resource_version


def test_connect_from_a_kubeconfig(kube: KubeServers) -> None:
    conn = KubeConnection.model_validate({"kubeconfig": str(kube.kubeconfig("controller"))})
    k = Kube.connect(conn)
    assert k.host == kube.url
    assert k.list(*PLAN, kube.namespace, "failoverplans").resource_version


def test_connection_options_name_one_source() -> None:
    with pytest.raises(ValueError, match="give one way to reach the API server"):
        KubeConnection.model_validate({"kubeconfig": "/k", "inCluster": True})
    with pytest.raises(ValueError, match="token and caFile go with host"):
        KubeConnection.model_validate({"token": {"fromEnv": "T"}})


# --- secrets and events ----------------------------------------------------------------------


def test_read_secret_gives_one_key_and_names_the_others_when_missing(
        kube: KubeServers, ctl: Kube) -> None:
    name = unique("creds")
    status, _ = kube.request("POST", f"/api/v1/namespaces/{kube.namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"tsig": "c2VjcmV0LXZhbHVl", "user": "ops"}})
    assert status == 201
    # rbac.yaml grants no Secret: the operator reads those `failoverctl secrets-role` names
    role = role_documents({kube.namespace: [name]}, namespace=kube.namespace,
                          service_account="failover-controller")
    kube.apply(role)
    kube.wait_role_effective(role)  # the RBAC authorizer learns of it a moment later
    assert ctl.read_secret(kube.namespace, name, "user") == b"ops"
    with pytest.raises(NotFound, match="has no key 'nope'; it has: tsig, user") as err:
        ctl.read_secret(kube.namespace, name, "nope")
    assert "c2VjcmV0LXZhbHVl" not in str(err.value)


def test_emit_event_records_an_event_about_the_object_with_secrets_scrubbed(
        kube: KubeServers, ctl: Kube, plan: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_TEST_SECRET", "hunter2-very-secret")
    Secrets().reveal(SecretRef.model_validate({"fromEnv": "KUBE_TEST_SECRET"}))
    event = ctl.emit_event(plan, reason="StepFinished",
                           message="redirect-traffic met its target (key hunter2-very-secret)")
    status, events = kube.request("GET", f"/api/v1/namespaces/{kube.namespace}/events")
    assert status == 200
    [stored] = [e for e in events["items"]
                if e["metadata"]["name"] == event["metadata"]["name"]]
    assert stored["involvedObject"]["kind"] == "FailoverPlan"
    assert stored["involvedObject"]["name"] == plan["metadata"]["name"]
    assert stored["involvedObject"]["uid"] == plan["metadata"]["uid"]
    assert stored["reason"] == "StepFinished" and stored["type"] == "Normal"
    assert stored["message"] == "redirect-traffic met its target (key ***)"


# --- leases --------------------------------------------------------------------------------


def test_lease_acquire_renew_and_take_over_after_expiry(
        kube: KubeServers, ctl: Kube) -> None:
    ns, name = kube.namespace, unique("leader")
    a = ctl.acquire_lease(ns, name, holder="replica-a", duration_seconds=15, now=T0)
    assert a is not None and a.holder == "replica-a" and a.transitions == 0
    assert a.acquire_time == T0 and a.renew_time == T0

    # b cannot have it while a's lease runs
    assert ctl.acquire_lease(ns, name, holder="replica-b", duration_seconds=15,
                             now=T0 + dt.timedelta(seconds=10)) is None
    with pytest.raises(LeaseHeld, match="held by replica-a"):
        ctl.take_over_lease(a, holder="replica-b", now=T0 + dt.timedelta(seconds=10))

    # a renews: renewTime moves, acquireTime and transitions stay
    renewed = ctl.acquire_lease(ns, name, holder="replica-a", duration_seconds=15,
                                now=T0 + dt.timedelta(seconds=12))
    assert renewed is not None and renewed.renew_time == T0 + dt.timedelta(seconds=12)
    assert renewed.acquire_time == T0 and renewed.transitions == 0
    assert renewed.held_by("replica-a", T0 + dt.timedelta(seconds=26))
    assert not renewed.held_by("replica-a", T0 + dt.timedelta(seconds=27))

    # a stops renewing; after the duration b takes over
    later = T0 + dt.timedelta(seconds=28)
    b = ctl.acquire_lease(ns, name, holder="replica-b", duration_seconds=15, now=later)
    assert b is not None and b.holder == "replica-b"
    assert b.transitions == 1 and b.acquire_time == later and b.renew_time == later

    # a, waking up with its old copy, learns it lost the lease and cannot win it back
    with pytest.raises(LeaseLost, match="now held by replica-b"):
        ctl.renew_lease(renewed, now=later)
    assert ctl.acquire_lease(ns, name, holder="replica-a", duration_seconds=15,
                             now=later) is None
    stored = ctl.get_lease(ns, name)
    assert stored is not None and stored.holder == "replica-b"
    assert stored.resource_version == b.resource_version


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win(
        kube: KubeServers, ctl: Kube) -> None:
    ns, name = kube.namespace, unique("race")
    ctl.create_lease(ns, name, holder="old", duration_seconds=5, now=T0)
    with pytest.raises(AlreadyExists):
        ctl.create_lease(ns, name, holder="other", duration_seconds=5, now=T0)
    later = T0 + dt.timedelta(minutes=1)
    seen = ctl.get_lease(ns, name)
    assert seen is not None and seen.expired(later)
    won = ctl.take_over_lease(seen, holder="b", now=later)  # both read the same copy
    with pytest.raises(LeaseHeld, match="another candidate wrote it first"):
        ctl.take_over_lease(seen, holder="c", now=later)
    assert won.holder == "b" and won.transitions == 1


def test_a_released_lease_is_free_at_once(kube: KubeServers, ctl: Kube) -> None:
    ns, name = kube.namespace, unique("release")
    a = ctl.create_lease(ns, name, holder="replica-a", duration_seconds=60, now=T0)
    released = ctl.release_lease(a, now=T0 + dt.timedelta(seconds=1))
    assert released.holder is None
    b = ctl.acquire_lease(ns, name, holder="replica-b", duration_seconds=60,
                          now=T0 + dt.timedelta(seconds=2))
    assert b is not None and b.holder == "replica-b" and b.transitions == 1

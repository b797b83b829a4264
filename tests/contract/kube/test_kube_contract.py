"""`FakeKube` holds to the real API server: every behaviour it claims, run through the same
tests against `controller.testing_kube.FakeKube` and against `controller.kube.Kube` on a
real kube-apiserver + etcd (the `kube` fixture), so the safety simulation, which runs
operators over the fake, tests them against the semantics they meet in a cluster.

Each test gets an `Api`: `admin` (people, kubectl) and `ctl` (the controller's identity
under the shipped RBAC) on one server, the namespace, and how to read the Events about an
object. The fake's own fault injection (which a real server cannot be asked for) is
tested at the end, on the fake only.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from controller.drill.servers.kube import KubeServers
from controller.kube import (
    Conflict,
    Fencing,
    Invalid,
    KubeAPI,
    Lease,
    LeaseLost,
    NotFound,
    StaleFencingToken,
    Unavailable,
)
from controller.testing_kube import FakeCluster, FakeKube, Fault

ROOT = Path(__file__).resolve().parents[3]
GROUP, VERSION, PLURAL = "failover.example.io", "v1alpha1", "failoverplans"
FINALIZER = "failover.example.io/finalizer"
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
_N = itertools.count()
Obj = dict[str, Any]


class Client(KubeAPI, Protocol):
    """The verbs both `Kube` and `FakeKube` offer: the operator's (`KubeAPI`) and what
    people and tests use besides."""

    conflicts: int

    def create(self, group: str, version: str, namespace: str, plural: str,
               body: Obj) -> Obj: ...

    def get(self, group: str, version: str, namespace: str, plural: str, name: str) -> Obj: ...

    def delete(self, group: str, version: str, namespace: str, plural: str,
               name: str) -> Obj: ...

    def replace(self, group: str, version: str, namespace: str, plural: str,
                body: Obj) -> Obj: ...

    def renew_lease(self, lease: Lease, *, now: dt.datetime | None = None,
                    duration_seconds: int | None = None) -> Lease: ...


@dataclass
class Api:
    admin: Client
    ctl: Client
    namespace: str
    events: Any  # (name) -> the Events about the object named so

    def plan(self, name: str | None = None, **extra: Any) -> Obj:
        doc = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
        doc["metadata"] = {"name": name or f"contract-{next(_N)}",
                           "namespace": self.namespace}
        doc.update(extra)
        return self.admin.create(GROUP, VERSION, self.namespace, PLURAL, doc)

    def args(self, obj: Obj) -> tuple[str, str, str, str, str]:
        return GROUP, VERSION, self.namespace, PLURAL, obj["metadata"]["name"]


def _real_events(kube: KubeServers, name: str) -> list[Obj]:
    status, reply = kube.request(
        "GET", f"/api/v1/namespaces/{kube.namespace}/events"
               f"?fieldSelector=involvedObject.name%3D{name}")
    assert status == 200, reply
    return list(reply["items"])


@pytest.fixture(params=["fake", "real"])
def api(request: pytest.FixtureRequest) -> Api:
    if request.param == "fake":
        cluster = FakeCluster()
        return Api(FakeKube(cluster, name="admin"), FakeKube(cluster, name="controller"),
                   "failover", cluster.events_about)
    kube: KubeServers = request.getfixturevalue("kube")
    return Api(kube.kube("admin"), kube.kube("controller"), kube.namespace,
               lambda name: _real_events(kube, name))


# --- identity, versions, generation ------------------------------------------------------


def test_a_created_object_has_a_uid_generation_one_and_no_status(api: Api) -> None:
    obj = api.plan(status={"phase": "FailedOver"})
    meta = obj["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["resourceVersion"]
    assert "status" not in obj  # the status subresource: a create cannot set it
    assert api.ctl.get(*api.args(obj))["metadata"]["uid"] == meta["uid"]


def test_a_write_with_a_stale_resource_version_is_refused(api: Api) -> None:
    obj = api.plan()
    api.admin.update(*api.args(obj), lambda o: o["metadata"].setdefault(
        "labels", {}).update(moved="on"))
    stale = {**obj, "metadata": {**obj["metadata"], "labels": {"ours": "x"}}}
    with pytest.raises(Conflict):
        api.ctl.replace(GROUP, VERSION, api.namespace, PLURAL, stale)
    assert api.ctl.get(*api.args(obj))["metadata"]["labels"] == {"moved": "on"}


def test_update_re_reads_on_a_conflict_and_keeps_the_concurrent_edit(api: Api) -> None:
    obj = api.plan()
    calls: list[str] = []

    def mutate(o: Obj) -> None:
        calls.append(o["metadata"]["resourceVersion"])
        if len(calls) == 1:  # someone else writes between our read and our write
            api.admin.update(*api.args(obj), lambda other: other["metadata"].setdefault(
                "labels", {}).update(edited="elsewhere"))
        o["metadata"].setdefault("annotations", {})["note"] = "ours"

    api.ctl.update(*api.args(obj), mutate)
    stored = api.ctl.get(*api.args(obj))
    assert len(calls) == 2 and calls[0] != calls[1] and api.ctl.conflicts == 1
    assert stored["metadata"]["labels"] == {"edited": "elsewhere"}
    assert stored["metadata"]["annotations"]["note"] == "ours"


def test_generation_counts_spec_changes_only(api: Api) -> None:
    obj = api.plan()
    args = api.args(obj)
    api.ctl.update(*args, lambda o: o["metadata"].setdefault("annotations", {}).update(
        note="metadata"))
    api.ctl.update_status(*args, lambda o: {**o, "status": {"phase": "Healthy"}})
    assert api.ctl.get(*args)["metadata"]["generation"] == 1
    api.ctl.update(*args, lambda o: o["spec"].update(automaticFailback=True))
    assert api.ctl.get(*args)["metadata"]["generation"] == 2


def test_the_status_subresource_writes_status_only_and_updates_never_status(
        api: Api) -> None:
    obj = api.plan()
    args = api.args(obj)

    def both(o: Obj) -> Obj:
        o["spec"]["automaticFailback"] = True
        return {**o, "status": {"phase": "FailedOver"}}

    api.ctl.update_status(*args, both)
    stored = api.ctl.get(*args)
    assert stored["status"]["phase"] == "FailedOver"
    assert stored["spec"].get("automaticFailback") is not True  # spec not written
    api.ctl.update(*args, lambda o: {**o, "status": {"phase": "Healthy"}})
    assert api.ctl.get(*args)["status"]["phase"] == "FailedOver"  # status not written


# --- finalizers, deletion, recreation -------------------------------------------------------


def test_delete_with_a_finalizer_marks_it_and_dropping_the_last_finalizer_removes_it(
        api: Api) -> None:
    obj = api.plan()
    args = api.args(obj)
    api.ctl.update(*args, lambda o: o["metadata"].update(finalizers=[FINALIZER]))
    api.admin.delete(*args)
    marked = api.ctl.get(*args)
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["generation"] == 2  # marking for deletion is a generation
    api.ctl.update_status(*args, lambda o: {**o, "status": {"phase": "FailingOver"}})
    assert api.ctl.get(*args)["status"]["phase"] == "FailingOver"  # still written
    with pytest.raises(Invalid, match="finalizers"):
        api.ctl.update(*args, lambda o: o["metadata"].update(
            finalizers=[FINALIZER, "example.io/another"]))
    api.ctl.update(*args, lambda o: o["metadata"].update(finalizers=[]))
    with pytest.raises(NotFound):
        api.ctl.get(*args)


def test_delete_without_finalizers_removes_at_once(api: Api) -> None:
    obj = api.plan()
    api.admin.delete(*api.args(obj))
    with pytest.raises(NotFound):
        api.ctl.get(*api.args(obj))


def test_an_object_created_again_under_its_name_is_another_object(api: Api) -> None:
    first = api.plan()
    name = first["metadata"]["name"]
    api.ctl.update_status(*api.args(first), lambda o: {**o, "status": {"phase": "Failed"}})
    api.admin.delete(*api.args(first))
    again = api.plan(name)
    assert again["metadata"]["uid"] != first["metadata"]["uid"]
    assert again["metadata"]["generation"] == 1 and "status" not in again


def test_watch_sees_every_change_in_order_from_the_list(api: Api) -> None:
    obj = api.plan()
    args = api.args(obj)
    listed = api.ctl.list(GROUP, VERSION, api.namespace, PLURAL)
    assert obj["metadata"]["name"] in {o["metadata"]["name"] for o in listed.items}
    api.ctl.update(*args, lambda o: o["metadata"].update(finalizers=[FINALIZER]))
    api.admin.delete(*args)
    api.ctl.update(*args, lambda o: o["metadata"].update(finalizers=[]))
    seen = []
    for event in api.ctl.watch(GROUP, VERSION, api.namespace, PLURAL,
                               resource_version=listed.resource_version, timeout_seconds=1):
        if event.type != "BOOKMARK" and event.object["metadata"]["name"] == args[-1]:
            seen.append((event.type, bool(event.object["metadata"].get("deletionTimestamp"))))
        if seen and seen[-1][0] == "DELETED":
            break
    assert seen == [("MODIFIED", False), ("MODIFIED", True), ("DELETED", True)]


# --- fencing ---------------------------------------------------------------------------------


def test_a_fenced_status_write_is_stamped_and_an_older_token_is_refused(api: Api) -> None:
    obj = api.plan()
    args = api.args(obj)
    api.ctl.update_status(*args, lambda o: {**o, "status": {"phase": "FailingOver"}},
                          fencing=Fencing(5, "replica-b"))
    status = api.ctl.get(*args)["status"]
    assert (status["fencingToken"], status["fencingHolder"]) == (5, "replica-b")
    with pytest.raises(StaleFencingToken, match="newer than this writer's 3"):
        api.ctl.update_status(*args, lambda o: {**o, "status": {"phase": "Healthy"}},
                              fencing=Fencing(3, "replica-a"))
    with pytest.raises(StaleFencingToken):
        api.ctl.update(*args, lambda o: o["metadata"].update(finalizers=[]),
                       fencing=Fencing(3, "replica-a"))
    assert api.ctl.get(*args)["status"]["phase"] == "FailingOver"


# --- leases ----------------------------------------------------------------------------------


def test_a_lease_taken_over_counts_a_transition_and_fences_the_old_holder(api: Api) -> None:
    ns, name = api.namespace, f"contract-lease-{next(_N)}"
    a = api.ctl.acquire_lease(ns, name, holder="replica-a", duration_seconds=15, now=T0)
    assert a is not None and a.holder == "replica-a" and a.transitions == 0
    assert api.ctl.acquire_lease(ns, name, holder="replica-b", duration_seconds=15,
                                 now=T0, expired=lambda lease: False) is None
    renewed = api.ctl.acquire_lease(ns, name, holder="replica-a", duration_seconds=10,
                                    now=T0 + dt.timedelta(seconds=2))
    assert renewed is not None and renewed.duration_seconds == 10
    b = api.ctl.acquire_lease(ns, name, holder="replica-b", duration_seconds=15,
                              now=T0 + dt.timedelta(seconds=30), expired=lambda lease: True)
    assert b is not None and b.holder == "replica-b" and b.transitions == 1
    with pytest.raises(LeaseLost, match="replica-b"):
        api.ctl.renew_lease(renewed)  # a wakes up with its old copy
    raised = api.ctl.advance_lease(b, transitions=7)
    assert raised.transitions == 7
    released = api.ctl.release_lease(raised)
    assert released.holder is None
    stored = api.ctl.get_lease(ns, name)
    assert stored is not None and stored.holder is None and stored.transitions == 7


# --- events ----------------------------------------------------------------------------------


def test_an_event_is_created_once_and_counted(api: Api) -> None:
    obj = api.plan()
    event = api.ctl.emit_event(obj, reason="DeletionDeferred", message="waits", type="Warning")
    api.ctl.count_event(event, 12)
    about = [e for e in api.events(obj["metadata"]["name"])
             if e["reason"] == "DeletionDeferred"]
    assert [(e["type"], e["count"]) for e in about] == [("Warning", 12)]


# --- the fake's own faults (a real server cannot be asked for them) ----------------------


def test_fake_injected_503s_refuse_the_next_matching_requests_only() -> None:
    cluster = FakeCluster()
    ctl = FakeKube(cluster)
    api = Api(ctl, ctl, "failover", cluster.events_about)
    obj = api.plan()
    args = api.args(obj)
    fault = cluster.inject(Fault("replace_status", obj["metadata"]["name"], times=2))
    for _ in range(2):
        with pytest.raises(Unavailable, match="503"):
            ctl.update_status(*args, lambda o: {**o, "status": {"phase": "Failed"}})
    assert "status" not in ctl.get(*args) and fault.hits == 2
    ctl.update_status(*args, lambda o: {**o, "status": {"phase": "Failed"}})
    assert ctl.get(*args)["status"]["phase"] == "Failed"


def test_fake_a_client_cut_off_gets_no_answer_and_its_watch_breaks_off() -> None:
    cluster = FakeCluster()
    ctl, admin = FakeKube(cluster, name="r1"), FakeKube(cluster, name="admin")
    api = Api(admin, ctl, "failover", cluster.events_about)
    obj = api.plan()
    listed = ctl.list(GROUP, VERSION, None, PLURAL)
    ctl.cut = True
    with pytest.raises(Unavailable, match="r1 is cut off"):
        ctl.get(*api.args(obj))
    with pytest.raises(Unavailable):
        list(ctl.watch(GROUP, VERSION, None, PLURAL,
                       resource_version=listed.resource_version, timeout_seconds=1))
    assert admin.get(*api.args(obj))["metadata"]["uid"] == obj["metadata"]["uid"]

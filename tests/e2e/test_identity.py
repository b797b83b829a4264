"""Identity that is checked, not claimed (issue 17 item 1), on a real kube-apiserver with the
people's roles (manifests/deploy/people.yaml, people-bindings.yaml) and the admission
policy (admission-policy.yaml) installed, and token identities for people:

- a forged `requested-by` / `approved-by` / `done-by` is rejected by the API server with a
  message naming the real user; the honest one passes; the operator's claims pass;
- each role does only its part (viewer reads, requester requests, approver approves,
  editor alone changes a plan's spec);
- the operator records the authenticated people and keeps four eyes: a person who holds
  both roles cannot approve their own manual failover.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import DEPLOY, KubeServers
from controller.journal import Journal
from controller.kube import Forbidden, Kube
from tests.e2e.test_cli import cli
from tests.e2e.test_operator import Replica, events_of, get, plan_body, until

PEOPLE = {"alice": ("failover-requesters",), "bob": ("failover-approvers",),
          "carol": ("failover-viewers",), "erin": ("failover-requesters", "failover-approvers"),
          "frank": ("failover-editors",), "dave": ()}
REQUEST, REQUESTED_BY = f"{GROUP}/request", f"{GROUP}/requested-by"
APPROVE, APPROVED_BY = f"{GROUP}/approve", f"{GROUP}/approved-by"
DONE, DONE_BY = f"{GROUP}/done", f"{GROUP}/done-by"
POLICY = "failover-annotations-identity"


def deploy_docs(*names: str) -> list[dict[str, Any]]:
    return [d for n in names for d in yaml.safe_load_all((DEPLOY / n).read_text()) if d]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServers]:
    """Its own API server: the policy would refuse other tests' made-up `*-by` names."""
    servers = KubeServers(people=PEOPLE).start()
    try:
        servers.apply(deploy_docs("people.yaml", "people-bindings.yaml",
                                  "admission-policy.yaml"))
        plans = f"/apis/{GROUP}/{VERSION}/namespaces/{servers.namespace}/{PLURAL}"
        status, reply = servers.request("POST", plans, plan_body(
            "probe", tmp_path_factory.mktemp("probe") / "world.json"))
        assert status == 201, reply

        def dry_run(who: str, notes: dict[str, str]) -> tuple[int, Any]:
            _, obj = servers.request("GET", f"{plans}/probe")
            obj["metadata"]["annotations"] = notes
            return servers.request("PUT", f"{plans}/probe?dryRun=All", obj, identity=who)

        def in_effect() -> bool:  # the RBAC and policy informers see them a moment later
            forged = dry_run("alice", {REQUEST: "failover", REQUESTED_BY: "bob"})
            return (dry_run("alice", {REQUEST: "failover", REQUESTED_BY: "alice"})[0] == 200
                    and dry_run("bob", {APPROVE: "r", APPROVED_BY: "bob"})[0] == 200
                    and forged[0] == 403 and POLICY in str(forged[1]))

        until("the people's roles and the admission policy in effect", in_effect, 60)
        yield servers
    finally:
        servers.stop()


def annotate(kube: Kube, ns: str, name: str, notes: Mapping[str, str | None]) -> None:
    kube.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"annotations": notes}})


def notes_of(cluster: KubeServers, name: str) -> dict[str, str]:
    obj = get(cluster.kube("admin"), cluster.namespace, name)
    return dict(obj["metadata"].get("annotations") or {})


def new_plan(cluster: KubeServers, tmp: Path, name: str, **spec: Any) -> None:
    body = plan_body(name, tmp / "world.json")
    body["spec"].update(spec)
    cluster.kube("admin").create(GROUP, VERSION, cluster.namespace, PLURAL, body)


@pytest.mark.parametrize(("who", "key", "by", "value"), [
    ("alice", REQUEST, REQUESTED_BY, "failover"),
    ("bob", APPROVE, APPROVED_BY, "shop-failover-1"),
    ("bob", DONE, DONE_BY, "shop-failover-1:call-bank"),
], ids=["requested-by", "approved-by", "done-by"])
def test_a_forged_by_annotation_is_rejected_and_the_honest_one_passes(
        cluster: KubeServers, tmp_path: Path, who: str, key: str, by: str,
        value: str) -> None:
    ns, name = cluster.namespace, f"forge-{by.rpartition('/')[2]}"
    new_plan(cluster, tmp_path, name)
    person = cluster.kube(who)
    someone_else = "erin"
    for forged, says in (({key: value, by: someone_else}, someone_else),
                         ({key: value}, "nothing")):
        with pytest.raises(Forbidden) as refused:
            annotate(person, ns, name, forged)
        assert (f"{by} must be you, {who} (it says {says}): ") in str(refused.value)
        assert key not in notes_of(cluster, name)
    # the admin (system:masters) is not exempt: the audit names whoever annotates
    with pytest.raises(Forbidden, match=f"{by} must be you, failover-test-admin"):
        annotate(cluster.kube("admin"), ns, name, {key: value, by: who})

    annotate(person, ns, name, {key: value, by: who})
    assert notes_of(cluster, name)[by] == who
    # changing only the `*-by` of a pending annotation is setting it again
    with pytest.raises(Forbidden, match=f"{by} must be you, {who}"):
        annotate(person, ns, name, {by: someone_else})
    # other changes with the annotation pending pass (the operator's finalizer, labels)
    controller = cluster.kube("controller")
    controller.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"labels": {"x": "y"}}})
    # the operator claims it: removing passes
    annotate(controller, ns, name, {key: None, by: None})
    assert key not in notes_of(cluster, name) and by not in notes_of(cluster, name)


def test_each_role_does_only_its_part(cluster: KubeServers, tmp_path: Path) -> None:
    ns, name = cluster.namespace, "roles"
    new_plan(cluster, tmp_path, name)
    viewer = cluster.kube("carol")
    assert get(viewer, ns, name)["metadata"]["name"] == name
    assert name in {o["metadata"]["name"] for o in viewer.list(GROUP, VERSION, ns,
                                                               PLURAL).items}
    with pytest.raises(Forbidden, match='User "carol" cannot patch'):
        annotate(viewer, ns, name, {REQUEST: "failover", REQUESTED_BY: "carol"})
    with pytest.raises(Forbidden, match='User "dave" cannot get'):
        get(cluster.kube("dave"), ns, name)
    with pytest.raises(Forbidden, match="alice may not approve runs of, or say a step is "
                                        f"done on, FailoverPlan {name}: bind the Role "
                                        "failover-approver"):
        annotate(cluster.kube("alice"), ns, name, {APPROVE: "r", APPROVED_BY: "alice"})
    with pytest.raises(Forbidden, match=f"bob may not request a failover or failback of "
                                        f"FailoverPlan {name}: bind the Role "
                                        "failover-requester"):
        annotate(cluster.kube("bob"), ns, name, {REQUEST: "failover", REQUESTED_BY: "bob"})
    assert notes_of(cluster, name) == {}
    # `update` lets requesters and approvers annotate, not rewrite the plan they act on
    redirect = {"spec": {"mode": "manual"}}
    for who in ("alice", "bob"):
        with pytest.raises(Forbidden, match=f"{who} may not change the spec of FailoverPlan "
                                            f"{name}: .* needs the Role failover-editor"):
            cluster.kube(who).patch(GROUP, VERSION, ns, PLURAL, name, redirect)
    assert get(viewer, ns, name)["spec"]["mode"] == "automatic"
    cluster.kube("frank").patch(GROUP, VERSION, ns, PLURAL, name, redirect)
    assert get(viewer, ns, name)["spec"]["mode"] == "manual"


def test_the_operator_records_the_real_people_and_keeps_four_eyes(
        cluster: KubeServers, tmp_path: Path) -> None:
    """erin holds both roles: she may request and approve, but not her own failover."""
    ns, name = cluster.namespace, "vault"
    new_plan(cluster, tmp_path, name, mode="manual")
    admin = cluster.kube("admin")
    replica = Replica(cluster, tmp_path, "replica-a")
    try:
        until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
            "phase") == "Healthy", logs=replica.output)
        annotate(cluster.kube("erin"), ns, name, {REQUEST: "failover", REQUESTED_BY: "erin"})
        waiting = until("the run waits for approval", lambda: (o := get(admin, ns, name))[
            "status"].get("phase") == "AwaitingApproval" and o, logs=replica.output)
        run = waiting["status"]["run"]
        assert run["requestedBy"] == "erin"

        annotate(cluster.kube("erin"), ns, name, {APPROVE: run["id"], APPROVED_BY: "erin"})
        refused = until("an ApprovalRefused Event", lambda: next((
            e for e in events_of(cluster, name) if e["reason"] == "ApprovalRefused"), None),
            logs=replica.output)
        assert refused["type"] == "Warning"
        assert (f"erin requested run {run['id']} and may not also approve it: plan {name} "
                "needs a second person (four eyes, approval.distinct)") in refused["message"]
        until("the approval claimed", lambda: APPROVE not in notes_of(cluster, name),
              logs=replica.output)
        assert get(admin, ns, name)["status"]["phase"] == "AwaitingApproval"

        annotate(cluster.kube("bob"), ns, name, {APPROVE: run["id"], APPROVED_BY: "bob"})
        until("FailedOver", lambda: get(admin, ns, name)["status"].get(
            "phase") == "FailedOver", logs=replica.output)
    finally:
        replica.stop()
    journal = Journal(replica.journal)
    try:
        trail = [(a["actor"], a["action"]) for a in journal.audit_trail(run_id=run["id"])]
        assert ("erin", "approval-refused") in trail and ("bob", "approve") in trail
        assert ("erin", "approve") not in trail  # her request is no approval either
    finally:
        journal.close()


def test_failoverctl_says_why_the_cluster_refused_a_claimed_name(
        cluster: KubeServers, tmp_path: Path) -> None:
    """`--as` cannot make a request in someone else's name: the API server refuses it and
    failoverctl shows its message; nothing is left pending."""
    name = "cli-forge"
    new_plan(cluster, tmp_path, name)
    forged = cli("failover", f"fop/{name}", "--reason", "drill", "--as", "bob", "--yes",
                 "--wait", "1", "-n", cluster.namespace,
                 "--kubeconfig", str(cluster.kubeconfig("alice")), journal=tmp_path / "c.db")
    assert forged.returncode != 0
    assert ("warning: the cluster knows you as alice, but --as says bob: "
            f"{REQUESTED_BY} names bob") in forged.stderr, forged.stderr
    assert (f"was refused by the ValidatingAdmissionPolicy {POLICY} (403): {REQUESTED_BY} "
            "must be you, alice (it says bob)") in forged.stderr, forged.stderr
    assert "Fix: grant" not in forged.stderr  # no Role fixes it: the policy's message says
    assert "Traceback" not in forged.stderr
    assert REQUEST not in notes_of(cluster, name)


def test_failoverctl_names_people_as_the_cluster_knows_them(
        cluster: KubeServers, tmp_path: Path) -> None:
    """Without `--as`, failoverctl's annotations carry the name the API server
    authenticated (not the login of the machine it runs on), so the policy lets them
    through and the run records the real people: alice requests, bob approves."""
    ns, name = cluster.namespace, "cli-people"
    new_plan(cluster, tmp_path, name, mode="manual")
    admin = cluster.kube("admin")

    def ctl(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--wait", "60", "-n", ns, "--kubeconfig",
                   str(cluster.kubeconfig(who)), journal=tmp_path / "c.db")

    replica = Replica(cluster, tmp_path, "replica-b")
    try:
        until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
            "phase") == "Healthy", logs=replica.output)
        asked = ctl("alice", "failover", f"fop/{name}", "--reason", "dc-a is flooding",
                    "--yes")
        assert asked.returncode == 4, asked.stdout + asked.stderr  # waits for approval
        run_id = asked.stdout.split(f"failover of {name} requested by alice: run ", 1)[1].split()[0]
        approved = ctl("bob", "approve", run_id, "--plan", f"fop/{name}")
        assert f"approved run of {run_id} as bob" in approved.stdout, approved.stderr
        assert "warning" not in asked.stderr + approved.stderr
        run = until("the operator took bob's approval", lambda: (r := get(admin, ns, name)[
            "status"]["run"]).get("approved") and r, logs=replica.output)
    finally:
        replica.stop()
    assert run["id"] == run_id and run["requestedBy"] == "alice"
    journal = Journal(replica.journal)
    try:
        trail = [(a["actor"], a["action"]) for a in journal.audit_trail(run_id=run_id)]
        assert ("alice", "start-failover") in trail and ("bob", "approve") in trail
    finally:
        journal.close()

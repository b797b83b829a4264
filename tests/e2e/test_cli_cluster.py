"""`failoverctl failover|failback|approve|done|status fop/NAME` against a real kube-apiserver,
with a real `failoverctl operator` acting (the Replica of test_operator.py).

The CLI runs as a user would run it (a subprocess with the admin kubeconfig; once in a
pty, answering the confirmation prompt). It only annotates the FailoverPlan and follows
its status; the operator does the work. The plans' backends are the in-memory fakes with
their state in a file, so every test reads the world back from the fakes themselves.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal
from controller.kube import Kube
from tests.e2e.test_cli import ROOT, cli
from tests.e2e.test_manual import read_until
from tests.e2e.test_operator import Replica, delete, get, names, plan_body, until

OPERATOR = "cli-operator"


@dataclass
class Cluster:
    """The API server, one running operator, and the plans this test created."""

    kube: KubeServers
    tmp: Path
    replica: Replica
    created: list[str] = field(default_factory=list)

    @property
    def admin(self) -> Kube:
        return self.kube.kube("admin")

    @property
    def ns(self) -> str:
        return self.kube.namespace

    def argv(self, *args: str) -> list[str]:
        return [*args, "-n", self.ns, "--kubeconfig", str(self.kube.kubeconfig("admin"))]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`failoverctl ARGS -n NS --kubeconfig admin` (its journal is never used)."""
        return cli(*self.argv(*args), journal=self.tmp / "cli.db")

    def create(self, name: str, *, edit: Callable[[dict[str, Any]], None] = lambda b: None,
               traffic_delay: float = 0.0) -> dict[str, Any]:
        """Create the plan and wait until the operator has reconciled it (Healthy, with
        its readiness checked); returns the body, whose fake options read the world."""
        body = plan_body(name, self.tmp / f"{name}.json", traffic_delay=traffic_delay)
        edit(body)
        self.admin.create(GROUP, VERSION, self.ns, PLURAL, body)
        self.created.append(name)
        until(f"{name} Healthy with readiness", lambda: (
            (st := get(self.admin, self.ns, name).get("status") or {}).get("phase") == "Healthy"
            and (st.get("readiness") or {}).get("score") is not None), logs=self.replica.output)
        return body

    def explain(self, name: str) -> Callable[[], str]:
        """For a wait that timed out: the plan's phase, decision and steps as the status
        has them, then the operator's threads and log."""

        def text() -> str:
            st = get(self.admin, self.ns, name).get("status") or {}
            steps = [{k: s.get(k) for k in ("name", "status", "error", "attempts")}
                     for s in (st.get("run") or {}).get("steps", [])]
            return (f"phase {st.get('phase')}; last decision: {st.get('lastDecision')}\n"
                    f"steps: {json.dumps(steps, indent=1)}\n{self.replica.stacks()}")
        return text

    def journal(self) -> Journal:
        """The operator's journal (its audit trail)."""
        return Journal(self.tmp / f"{OPERATOR}.db")


@pytest.fixture
def cluster(kube: KubeServers, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(kube, tmp_path, Replica(kube, tmp_path, OPERATOR))
    try:
        yield c
        for name in c.created:  # while the operator runs: it releases the finalizers
            delete(kube, name)
        until("plans deleted", lambda: not set(c.created) & names(c.admin, c.ns),
              logs=c.replica.output)
        c.replica.stop()
        assert "Traceback" not in c.replica.output()
    finally:
        c.replica.stop(signal.SIGKILL)  # a no-op once it has stopped


def world(body: dict[str, Any]) -> dict[str, Any]:
    """Every backend of the plan, read back through its fake."""
    fakes = {"traffic": testing.FakeTrafficBackend, "dns": testing.FakeDnsProvider,
             "notifier": testing.FakeNotifier}
    out: dict[str, Any] = {}
    for b in body["spec"]["backends"]:
        fake = fakes[b["role"]]
        backend: Any = fake(fake.Options.model_validate(b["options"]))  # type: ignore[attr-defined]
        out[b["name"]] = (backend.current() if b["role"] == "traffic" else
                          [r.to_json() for r in backend.records()] if b["role"] == "dns"
                          else backend.sent())
    return out


def test_failover_in_a_terminal_follows_the_operator_then_status_and_failback(
        cluster: Cluster) -> None:
    name = "cli-shop"
    body = cluster.create(name, traffic_delay=0.5)
    untouched = world(body)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(cluster.tmp / "cli.db"),
         *cluster.argv("failover", f"fop/{name}", "--reason", "dc-a power", "--as", "alice",
                       "--level", "2")],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True)
    os.close(slave)
    screen = read_until(master, "Proceed with the failover")
    assert f"failover of FailoverPlan {cluster.ns}/{name}: dc-a -> dc-b" in screen
    assert "2. redirect-traffic         target    1h  shift traffic to dc-b via edge" in screen
    assert "backup site readiness: 100 %" in screen
    assert world(body) == untouched  # nothing happens before the answer
    os.write(master, b"y\n")
    screen += read_until(master, "FailedOver")
    assert proc.wait(timeout=60) == 0, screen
    os.close(master)

    run_id = screen.split("requested by alice: run ", 1)[1].split()[0]
    assert "[... ] redirect-traffic" in screen  # shown live, while the step ran
    for step in ("notify-incident", "redirect-traffic", "dns-cutover", "link-test"):
        assert re.search(rf"\[ok  \] {step} +since detection +[\d.]+ s +target +\w+ met",
                         screen), screen
    assert f"run {run_id}: FailedOver" in screen

    st = get(cluster.admin, cluster.ns, name)
    assert st["status"]["phase"] == "FailedOver" and st["status"]["level"] == 2
    assert st["status"]["run"]["id"] == run_id and st["status"]["run"]["requestedBy"] == "alice"
    assert not any(k.startswith(GROUP) for k in st["metadata"].get("annotations") or {})
    assert world(body)["edge"] == {"dc-a": 0, "dc-b": 100}
    assert world(body)["zone"][0]["values"] == ["198.51.100.10"]

    shown = cluster.ctl("status", f"fop/{name}")
    assert shown.returncode == 0, shown.stderr
    assert f"{name} [{cluster.ns}]: FailedOver (level 2, active site dc-b)" in shown.stdout
    assert "FailedOver=True (ServingFromBackup)" in shown.stdout
    assert "backup site readiness 100 %" in shown.stdout
    assert f"run {run_id} (failover): FailedOver" in shown.stdout
    assert "[ok  ] dns-cutover" in shown.stdout
    listed = json.loads(cluster.ctl("status", "-o", "json").stdout)  # the whole namespace
    [entry] = [e for e in listed if e["plan"] == name]
    assert (entry["activeSite"], entry["run"]["id"], entry["namespace"]) == (
        "dc-b", run_id, cluster.ns)
    assert {c["type"]: c["status"] for c in entry["conditions"]}["FailedOver"] == "True"

    preview = cluster.ctl("failback", f"fop/{name}", "--reason", "dc-a repaired", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "revert-dns-cutover" in preview.stdout and "revert-redirect-traffic" in preview.stdout
    assert ("would change: restore the original saved before redirect-traffic: "
            "{'dc-a': 100, 'dc-b': 0}") in preview.stdout
    back = cluster.ctl("failback", f"fop/{name}", "--reason", "dc-a repaired", "--yes",
                       "-o", "json")
    assert back.returncode == 0, back.stdout + back.stderr
    report = json.loads(back.stdout)
    assert report["run"]["kind"] == "failback" and report["run"]["phase"] == "Healthy"
    assert report["summary"]["failed"] == 0 and report["summary"]["steps"] == 2
    restored = world(body)
    assert restored["edge"] == untouched["edge"] and restored["zone"] == untouched["zone"]
    assert get(cluster.admin, cluster.ns, name)["status"]["activeSite"] == "dc-a"


def test_manual_mode_waits_for_approve_then_for_done_by_cli(cluster: Cluster) -> None:
    name = "cli-manual"

    def manual(body: dict[str, Any]) -> None:
        body["spec"]["mode"] = "manual"
        body["spec"]["approval"] = {"required": 1, "approvers": ["bob"]}
        body["spec"]["steps"].insert(0, {"name": "acknowledge-alert", "action": "manual",
                                         "target": "5m", "params": {
                                             "instructions": "acknowledge the alert"}})

    body = cluster.create(name, edit=manual)
    plan = f"fop/{name}"
    res = cluster.ctl("failover", plan, "--reason", "dc-a power", "--yes", "--as", "alice")
    assert res.returncode == 4, res.stdout + res.stderr
    run_id = res.stdout.split("requested by alice: run ", 1)[1].split()[0]
    assert (f"waiting for approval: failoverctl approve {run_id} --plan {plan} "
            f"-n {cluster.ns}") in res.stdout
    assert world(body)["edge"] == {"dc-a": 100, "dc-b": 0}  # nothing moves unapproved

    denied = cluster.ctl("approve", run_id, "--plan", plan, "--as", "mallory")
    assert denied.returncode == 2 and "mallory is not an approver" in denied.stderr
    unknown = cluster.ctl("approve", "no-such-run", "--plan", plan, "--as", "bob")
    assert unknown.returncode == 2 and "no run 'no-such-run'" in unknown.stderr

    ok = cluster.ctl("approve", run_id, "--plan", plan, "--as", "bob")
    assert ok.returncode == 4, ok.stdout + ok.stderr  # the run now waits for a person
    assert f"approved run of {run_id} as bob" in ok.stdout
    assert "[todo] acknowledge-alert" in ok.stdout
    assert (f"waiting for a person: failoverctl done {run_id} acknowledge-alert --plan {plan}"
            in ok.stdout)
    wrong = cluster.ctl("done", run_id, "redirect-traffic", "--plan", plan)
    assert wrong.returncode == 2 and "no human step 'redirect-traffic'" in wrong.stderr

    done = cluster.ctl("done", run_id, "acknowledge-alert", "--plan", plan, "--as", "carol")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\[ok  \] acknowledge-alert .* met  by carol", done.stdout), done.stdout
    final = until("FailedOver", lambda: (o := get(cluster.admin, cluster.ns, name))[
        "status"]["phase"] == "FailedOver" and o, logs=cluster.explain(name))
    steps = {s["name"]: s for s in final["status"]["run"]["steps"]}
    assert all(s["status"] == "succeeded" for s in steps.values()), steps
    assert steps["acknowledge-alert"]["approvedBy"] == "carol"
    assert world(body)["edge"] == {"dc-a": 0, "dc-b": 100}
    journal = cluster.journal()
    audit = {(a["actor"], a["action"]) for a in journal.audit_trail(run_id=run_id)}
    journal.close()
    assert {("bob", "approve"), ("carol", "done")} <= audit, audit


def test_dry_run_changes_neither_the_resource_nor_the_world(cluster: Cluster) -> None:
    name = "cli-dry"
    body = cluster.create(name)
    before_obj, before_world = get(cluster.admin, cluster.ns, name), world(body)
    text = cluster.ctl("failover", f"fop/{name}", "--reason", "x", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "1. notify-incident" in text.stdout and "4. link-test" in text.stdout
    assert "dry run: nothing was changed" in text.stdout
    res = cluster.ctl("failover", f"fop/{name}", "--reason", "x", "--dry-run", "-o", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["dryRun"] is True and out["readiness"]["score"] == 100
    assert [s["name"] for s in out["steps"]] == ["notify-incident", "redirect-traffic",
                                                 "dns-cutover", "link-test"]
    after = get(cluster.admin, cluster.ns, name)
    assert after["metadata"].get("annotations") == before_obj["metadata"].get("annotations")
    assert after["metadata"]["generation"] == before_obj["metadata"]["generation"]
    assert after["status"]["phase"] == "Healthy" and "run" not in after["status"]
    assert world(body) == before_world
    assert world(body)["edge"] == {"dc-a": 100, "dc-b": 0}
    assert world(body)["im"] == [] and world(body)["mail"] == []


def test_a_missing_resource_is_a_clear_error_with_exit_code_2(kube: KubeServers,
                                                              tmp_path: Path) -> None:
    c = Cluster(kube, tmp_path, replica=None)  # type: ignore[arg-type]  # no operator needed
    for argv in (("failover", "fop/no-such-plan", "--reason", "x", "--yes"),
                 ("status", "fop/no-such-plan"),
                 ("approve", "r1", "--plan", "fop/no-such-plan"),
                 ("done", "r1", "ack", "--plan", "fop/no-such-plan")):
        res = c.ctl(*argv)
        assert res.returncode == 2, (argv, res.stdout, res.stderr)
        assert "no-such-plan" in res.stderr and "not found" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    bad = cli("status", "fop/x", "--kubeconfig", str(tmp_path / "nope"), journal=tmp_path / "j")
    assert bad.returncode == 2 and "kubeconfig" in bad.stderr and "Traceback" not in bad.stderr


def test_drill_on_a_resource_fails_over_and_back_through_the_operator(
        cluster: Cluster) -> None:
    name = "cli-drill"
    body = cluster.create(name)
    before = world(body)
    res = cluster.ctl("drill", f"fop/{name}", "--as", "dr-team")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "failover of cli-drill requested by dr-team" in res.stdout
    assert "failback of cli-drill requested by dr-team" in res.stdout
    status = get(cluster.admin, cluster.ns, name)["status"]
    assert status["phase"] == "Healthy" and status["run"]["kind"] == "failback"
    after = world(body)
    assert after["edge"] == before["edge"] and after["zone"] == before["zone"]
    reasons = [a["detail"] for a in cluster.journal().audit_trail(plan=name)
               if a["action"].startswith("start-")]
    assert any("DR drill: planned failover" in r for r in reasons), reasons


@pytest.fixture
def unattended(kube: KubeServers, tmp_path: Path) -> Iterator[tuple[Cluster, str]]:
    """A FailoverPlan with no operator running, so a request on it stays unclaimed; it
    carries an annotation of someone else's, which the drill must leave alone."""
    c = Cluster(kube, tmp_path, replica=None)  # type: ignore[arg-type]  # no operator
    name = "cli-drill-unclaimed"
    body = plan_body(name, tmp_path / f"{name}.json")
    body["metadata"]["annotations"] = {"example.com/owner": "team-dr"}
    for service in body["spec"]["services"]:
        service["timeout"] = service["interval"]  # not the CRD's default, longer than it
    c.admin.create(GROUP, VERSION, c.ns, PLURAL, body)
    try:
        yield c, name
    finally:
        delete(kube, name)


def test_drill_withdraws_its_unclaimed_request_when_wait_runs_out(
        unattended: tuple[Cluster, str]) -> None:
    cluster, name = unattended
    before = get(cluster.admin, cluster.ns, name)["metadata"]["annotations"]
    res = cluster.ctl("drill", f"fop/{name}", "--as", "dr-team", "--wait", "2")
    assert res.returncode == 4, res.stdout + res.stderr
    assert ("the failover request was not picked up within 2 s (is `failoverctl operator` "
            f"running for namespace {cluster.ns}?) and was withdrawn before the operator "
            "claimed it: nothing was done") in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # exactly what the drill set is gone: no request an operator would act on later
    assert get(cluster.admin, cluster.ns, name)["metadata"]["annotations"] == before


def test_drill_stopped_before_the_operator_claimed_it_withdraws_the_request(
        unattended: tuple[Cluster, str]) -> None:
    cluster, name = unattended
    before = get(cluster.admin, cluster.ns, name)["metadata"]["annotations"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(cluster.tmp / "cli.db"),
         *cluster.argv("drill", f"fop/{name}", "--as", "dr-team")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        until("the drill's failover request", lambda: get(cluster.admin, cluster.ns, name)[
            "metadata"]["annotations"].get(f"{GROUP}/request") == "failover")
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stdout + stderr
    assert ("drill interrupted by SIGTERM; the failover request was withdrawn before the "
            "operator claimed it: nothing was done") in stderr, stderr
    assert "Traceback" not in stderr
    assert get(cluster.admin, cluster.ns, name)["metadata"]["annotations"] == before


def test_a_plan_file_coordinated_by_the_operator_only_requests(cluster: Cluster) -> None:
    """`spec.coordination.kind: kubernetes`: the CLI never acts on the plan file itself —
    `failover PLAN` requests through the FailoverPlan resource exactly as with fop/NAME,
    and `run PLAN` refuses — so a person and the operator never both fail it over."""
    import yaml

    name = "cli-coordinated"
    body = cluster.create(name)
    plan = cluster.tmp / "coordinated.yaml"
    spec = {**body["spec"], "coordination": {"kind": "kubernetes",
                                             "options": {"namespace": cluster.ns}}}
    plan.write_text(yaml.safe_dump({**body, "spec": spec}))
    refused = cli("run", str(plan), "--ticks", "1", journal=cluster.tmp / "cli.db")
    assert refused.returncode == 2
    assert f"plan {name} is acted on by the operator in the cluster" in refused.stderr
    res = cli("failover", str(plan), "--reason", "planned", "--yes", "--as", "alice",
              "--kubeconfig", str(cluster.kube.kubeconfig("admin")), journal=cluster.tmp / "cli.db")
    assert res.returncode == 0, res.stdout + res.stderr
    st = get(cluster.admin, cluster.ns, name)["status"]
    assert st["phase"] == "FailedOver" and st["run"]["requestedBy"] == "alice"
    assert world(body)["edge"] == {"dc-a": 0, "dc-b": 100}
    assert Journal(cluster.tmp / "cli.db").runs() == []  # the CLI acted on nothing itself

"""The operator archives every run it finishes to the plan's records store, so its journal
(an emptyDir, gone with the pod: manifests/deploy/deployment.yaml) is never the only
record: after the operator and its journal are gone, `failoverctl history fop/NAME` and
`report RUN --plan fop/NAME` still read the run. A store the CLI cannot reach is said."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from tests.e2e.test_cli import cli
from tests.e2e.test_operator import Replica, delete, get, names, plan_body, until


def test_a_run_the_operator_finished_outlives_its_journal(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "records-shop"
    state, records = tmp_path / "world.json", tmp_path / "records"
    body = plan_body(name, state)
    body["spec"]["records"] = {"store": {"kind": "directory",
                                         "options": {"path": str(records)}}, "keep": "180d"}
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    try:
        _outlives(kube, replicas, tmp_path, name, state, records)
    finally:  # the session's API server outlives the test: leave no plan for later ones
        for plan in (name, "records-elsewhere"):
            if plan in names(admin, ns):
                admin.patch(GROUP, VERSION, ns, PLURAL, plan, {"metadata": {"finalizers": []}})
                delete(kube, plan)
        until("plans deleted", lambda: not {name, "records-elsewhere"} & names(admin, ns))


def _outlives(kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path,
              name: str, state: Path, records: Path) -> None:
    admin, ns = kube.kube("admin"), kube.namespace
    replica = replicas("records-a")
    until("Healthy", lambda: get(admin, ns, name).get("status", {}).get("phase") == "Healthy",
          logs=replica.output)
    testing.set_health("dc-a", False, state_file=str(state))
    run_id = until("FailedOver", lambda: (st := get(admin, ns, name)["status"]).get(
        "phase") == "FailedOver" and st["run"]["id"], logs=replica.output)
    archived = records / "runs" / name / f"{run_id}.json"
    until("the run archived", archived.exists, logs=replica.output)

    replica.stop(signal.SIGKILL)  # the pod is gone, and its emptyDir with the journal
    replica.journal.unlink()
    where = ["-n", ns, "--kubeconfig", str(kube.kubeconfig("admin"))]
    res = cli("history", f"fop/{name}", *where, "-o", "json", journal=tmp_path / "cli.db")
    assert res.returncode == 0, res.stderr
    # (on a loaded host a first failover can fail a step and the plan trip again: each
    # finished run is archived, the last one is the one the status showed)
    runs = {r["id"]: r["phase"] for r in json.loads(res.stdout)["runs"]}
    assert runs[run_id] == "FailedOver", runs
    rep = cli("report", run_id, "--plan", f"fop/{name}", *where, "-o", "json",
              journal=tmp_path / "cli.db")
    assert rep.returncode == 0, rep.stderr
    assert [s["status"] for s in json.loads(rep.stdout)["steps"]] == ["succeeded"] * 4

    elsewhere = plan_body("records-elsewhere", state)
    gone = tmp_path / "on-another-host" / "records"  # nothing here creates it
    elsewhere["spec"]["records"] = {"store": {"kind": "directory", "options": {
        "path": str(gone)}}}
    admin.create(GROUP, VERSION, ns, PLURAL, elsewhere)
    res = cli("history", "fop/records-elsewhere", *where, journal=tmp_path / "cli.db")
    assert res.returncode == 1
    assert (f"keeps its records in directory {gone}, which is not on "
            "this host: read them in the operator's pod (`kubectl exec -n failover-system "
            "deploy/failover-controller -- failoverctl history fop/records-elsewhere -n "
            f"{ns}`)") in res.stderr

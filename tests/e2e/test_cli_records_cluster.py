"""The operator's records, with a real kube-apiserver and a real `failoverctl operator`: a
drill run through it (`failoverctl drill fop/NAME`) is a drill on record — judged when
the operator archives the drill's failback, its verdict in the plan's records store under
`drills/<plan>/`, listed passed by `failoverctl history --drills fop/NAME`; and a run the
store refused when it ended is archived on the way out, once the store answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal
from tests.e2e.test_cli import cli
from tests.e2e.test_operator import Replica, delete, get, names, plan_body, until


def test_a_drill_through_the_operator_is_judged_and_listed_by_history(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "records-drill"
    records = tmp_path / "records"
    body = plan_body(name, tmp_path / "world.json")
    body["spec"]["records"] = {"store": {"kind": "directory",
                                         "options": {"path": str(records)}}, "keep": "180d"}
    replica = replicas("records-drill-op")
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    try:
        until("Healthy with readiness", lambda: (
            (st := get(admin, ns, name).get("status") or {}).get("phase") == "Healthy"
            and (st.get("readiness") or {}).get("score") is not None), logs=replica.output)
        where = ["-n", ns, "--kubeconfig", str(kube.kubeconfig("admin"))]
        res = cli("drill", f"fop/{name}", *where, journal=tmp_path / "cli.db")
        assert res.returncode == 0, res.stdout + res.stderr
        until("the drill's verdict archived",
              lambda: list((records / "drills" / name).glob("*.json")), logs=replica.output)

        res = cli("history", f"fop/{name}", "--drills", *where, "-o", "json",
                  journal=tmp_path / "cli.db")
        assert res.returncode == 0, res.stderr
        listed = json.loads(res.stdout)
        [drill] = listed["drills"]
        assert drill["passed"] is True and drill["failedChecks"] == []
        runs = listed["runs"]
        assert [(r["kind"], r["phase"]) for r in runs] == [("failover", "FailedOver"),
                                                          ("failback", "Healthy")]
        assert drill["key"].endswith(f"-{runs[0]['id']}.json")
        text = cli("history", f"fop/{name}", "--drills", *where, journal=tmp_path / "cli.db")
        assert f"drills of {name} since" in text.stdout and "PASSED" in text.stdout
    finally:  # the session's API server outlives the test: leave no plan for later ones
        delete(kube, name)  # while the operator runs: it releases its finalizer
        until("plan deleted", lambda: name not in names(admin, ns), logs=replica.output)
    replica.stop()
    assert "Traceback" not in replica.output()


def test_a_run_the_store_refused_is_archived_on_the_way_out_once_it_answers(
        kube: KubeServers, replicas: Callable[..., Replica], tmp_path: Path) -> None:
    """The records store was unreachable when the run ended (its retry waits 30 s): on
    SIGTERM the operator makes one last attempt, and the run is archived before it goes."""
    admin, ns, name = kube.kube("admin"), kube.namespace, "records-flush"
    state, mount = tmp_path / "world.json", tmp_path / "mount"
    mount.write_text("not mounted yet")  # a directory store under a file: writes fail
    body = plan_body(name, state)
    body["spec"]["records"] = {"store": {"kind": "directory",
                                         "options": {"path": str(mount / "records")}}}
    replica = replicas("records-flush-op")
    admin.create(GROUP, VERSION, ns, PLURAL, body)
    try:
        until("Healthy", lambda: get(admin, ns, name).get("status", {}).get("phase")
              == "Healthy", logs=replica.output)
        testing.set_health("dc-a", False, state_file=str(state))
        run_id = until("FailedOver", lambda: (st := get(admin, ns, name)["status"]).get(
            "phase") == "FailedOver" and st["run"]["id"], logs=replica.output)
        until("the archive refused", lambda: f"run {run_id} not archived, trying again"
              in replica.output(), logs=replica.output)
        mount.unlink()  # the store is back, long before the retry is due
        replica.stop()  # SIGTERM
        assert (mount / "records" / "runs" / name / f"{run_id}.json").is_file(), \
            replica.output()
        assert "NOT archived before the controller stopped" not in replica.output()
        assert "Traceback" not in replica.output()
        assert run_id not in Journal(replica.journal).unarchived(name)
    finally:
        if name in names(admin, ns):
            admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})
            delete(kube, name)
        until("plan deleted", lambda: name not in names(admin, ns))

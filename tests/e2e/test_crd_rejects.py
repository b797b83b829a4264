"""The FailoverPlan CRD on a real kube-apiserver refuses plans that validate field by field
yet cannot run (issue 21, item 20): `kubectl apply` fails at once, naming the field,
instead of the operator finding out later. Each case is also refused by `failoverctl
validate` (tests/unit/test_plan.py and the CLI case below), in the same words.

The session's API server installs the CRD from manifests/crd/ (conftest `kube`), so this
tests the shipped file.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.kube_errors import Invalid
from tests.e2e.test_operator import delete, plan_body

ROOT = Path(__file__).resolve().parents[2]


def _steps(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in body["spec"]["steps"]}


Edit = Callable[[dict[str, Any]], None]

CASES: list[tuple[str, Edit, str]] = [
    ("zero probe interval",
     lambda b: b["spec"]["services"][0].update(interval="0s"), "spec.services[0].interval"),
    ("zero probe timeout",
     lambda b: b["spec"]["services"][1].update(timeout="0ms"), "spec.services[1].timeout"),
    ("zero step timeout",
     lambda b: _steps(b)["link-test"].update(timeout="0m0s"), "spec.steps[3].timeout"),
    ("more approvals required than approvers",
     lambda b: b["spec"].update(approval={"required": 3, "approvers": ["alice", "bob"]}),
     "spec.approval.required"),
    ("negative traffic weight",
     lambda b: _steps(b)["redirect-traffic"]["params"].update(weights={"dc-a": -1,
                                                                       "dc-b": 100}),
     "spec.steps[1].params.weights.dc-a"),
    ("all traffic weights zero",
     lambda b: _steps(b)["redirect-traffic"]["params"].update(weights={"dc-a": 0,
                                                                       "dc-b": 0}),
     "sends the traffic nowhere"),
    ("traffic weight for an unknown site",
     lambda b: _steps(b)["redirect-traffic"]["params"].update(weights={"dc-c/web1": 100,
                                                                       "dc-a": 0}),
     "names a site the plan does not have"),
    ("traffic to an unknown site",
     lambda b: _steps(b)["redirect-traffic"]["params"].update(to="dc-c"),
     "names a site the plan does not have"),
    ("signal named like a service",
     lambda b: b["spec"].update(signals=[{"name": "web", "baseline": 10, "probe": {
         "kind": "memory", "options": {"key": "c"}}}]),
     "spec.signals: Invalid value"),
]


@pytest.mark.parametrize(("label", "edit", "named"), CASES, ids=[c[0] for c in CASES])
def test_the_api_server_refuses_a_plan_that_cannot_run(
        kube: KubeServers, tmp_path: Path, label: str, edit: Edit, named: str) -> None:
    body = plan_body("cannot-run", tmp_path / "state.json")
    edit(body)
    with pytest.raises(Invalid) as info:
        kube.kube("admin").create(GROUP, VERSION, kube.namespace, PLURAL, body)
    assert named in str(info.value), str(info.value)
    # the same document as a plan file fails `failoverctl validate` with exit 2
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(body))
    res = subprocess.run([sys.executable, "-m", "controller", "validate", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "invalid" in res.stdout and "Traceback" not in res.stderr


def test_the_api_server_still_accepts_the_edges_that_can_run(kube: KubeServers,
                                                             tmp_path: Path) -> None:
    body = plan_body("can-run", tmp_path / "state.json")
    body["spec"]["services"][0]["interval"] = "0s500ms"
    body["spec"]["approval"] = {"required": 2, "approvers": ["alice", "bob"]}
    _steps(body)["redirect-traffic"]["params"] = {
        "to": "dc-b", "weights": {"dc-b/web1": 1, "dc-a": 0}}
    body["spec"]["signals"] = [{"name": "complaints", "baseline": 10,
                                "probe": {"kind": "memory", "options": {"key": "c"}}}]
    kube.kube("admin").create(GROUP, VERSION, kube.namespace, PLURAL, body)
    delete(kube, "can-run")
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(body))
    res = subprocess.run([sys.executable, "-m", "controller", "validate", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr

"""The operator reads only the Secrets its plans name: rbac.yaml grants no Secret at all,
and the Role `failoverctl secrets-role` generates from the plans (`resourceNames`, one
per namespace) lets the operator's identity read exactly those, on the real
kube-apiserver (RBAC on)."""

from __future__ import annotations

import base64
import copy
from pathlib import Path

import pytest
import yaml

from controller.drill.servers.kube import KubeServers
from controller.kube import KubeError
from tests.e2e.test_cli import EXAMPLE, cli

NS = "failover-system"


def plan_naming_secrets(tmp_path: Path) -> Path:
    """The example plan with a webhook notifier whose URL is a Secret of the operator's
    namespace, and a records store whose S3 keys are a Secret of namespace `apps`."""
    data = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["spec"]["backends"].append({
        "name": "hook", "role": "notifier", "kind": "webhook",
        "options": {"url": {"fromSecret": {"name": "hook-url", "key": "url"}}}})
    s3 = {"fromSecret": {"name": "records-s3", "key": "id", "namespace": "apps"}}
    data["spec"]["records"] = {"store": {"kind": "s3", "options": {
        "bucket": "records", "accessKeyId": s3,
        "secretAccessKey": {"fromSecret": {**s3["fromSecret"], "key": "secret"}}}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def secret(name: str, namespace: str, **data: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_the_generated_role_grants_exactly_the_named_secrets(
        kube: KubeServers, tmp_path: Path) -> None:
    plan = plan_naming_secrets(tmp_path)
    out = cli("secrets-role", str(plan), journal=tmp_path / "j.db")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    rules = {d["metadata"]["namespace"]: d["rules"] for d in docs if d["kind"] == "Role"}
    assert rules == {
        "apps": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                  "resourceNames": ["records-s3"]}],
        NS: [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
              "resourceNames": ["hook-url"]}]}

    kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}},
                secret("hook-url", NS, url="https://hooks.example.test/x"),
                secret("unnamed", NS, token="not-for-the-operator"),
                secret("records-s3", "apps", id="AKIA", secret="s3cr3t-value")])
    operator = kube.kube("controller")
    with pytest.raises(KubeError) as before:  # rbac.yaml alone: no Secret at all
        operator.read_secret(NS, "hook-url", "url")
    assert "forbidden" in str(before.value).lower()

    kube.apply(docs)
    assert operator.read_secret(NS, "hook-url", "url") == b"https://hooks.example.test/x"
    assert operator.read_secret("apps", "records-s3", "secret") == b"s3cr3t-value"
    with pytest.raises(KubeError) as other:
        operator.read_secret(NS, "unnamed", "token")
    assert "forbidden" in str(other.value).lower()


def test_plans_that_name_no_secret_need_no_role(tmp_path: Path) -> None:
    out = cli("secrets-role", str(EXAMPLE), journal=tmp_path / "j.db")
    assert out.returncode == 0
    assert "the plans name no Secret" in out.stdout
    assert list(yaml.safe_load_all(out.stdout)) == []  # nothing to apply

"""Deployment manifests: least-privilege RBAC, hardened pod, files the kustomization names."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "manifests/deploy"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_rbac_has_no_wildcards_and_no_cluster_roles() -> None:
    for doc in docs("rbac.yaml"):
        assert doc["kind"] not in ("ClusterRole", "ClusterRoleBinding")
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {key}: {rule}"
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                rule["verbs"])
        if doc["kind"] == "RoleBinding":
            assert doc["roleRef"]["name"] != "cluster-admin"


def test_pod_is_non_root_read_only_with_probes() -> None:
    [deployment] = docs("deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]


def test_kustomization_resources_exist() -> None:
    [kustomization] = docs("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists(), resource

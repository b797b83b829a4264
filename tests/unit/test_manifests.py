"""Deployment manifests: least-privilege RBAC, hardened pod, files the kustomization names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from controller.drill.servers.kube import kubectl_path

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "manifests/deploy"


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_rbac_has_no_wildcards_and_no_cluster_wide_grant() -> None:
    """Roles and the target ClusterRole name every verb; nothing is bound cluster-wide:
    the ClusterRole is bound per application namespace by a RoleBinding only."""
    rbac, target = docs("rbac.yaml"), docs("target-namespace.yaml")
    for doc in rbac + target:
        assert doc["kind"] != "ClusterRoleBinding", "a cluster-wide grant"
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {key}: {rule}"
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                rule["verbs"])
        if doc["kind"] == "RoleBinding":
            assert doc["roleRef"]["name"] != "cluster-admin"
    [cluster_role] = [d for d in rbac if d["kind"] == "ClusterRole"]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "virtualservices", "httproutes", "trafficsplits"}  # the mesh objects, nothing more
    [binding] = target
    assert binding["kind"] == "RoleBinding" and binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
        "name": cluster_role["metadata"]["name"]}
    [sa] = [d for d in rbac if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]


def test_two_replicas_on_different_nodes_with_a_disruption_budget() -> None:
    [deployment], [pdb] = docs("deployment.yaml"), docs("pdb.yaml")
    spec = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    keys = {c["topologyKey"]: c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]}
    assert keys["kubernetes.io/hostname"] == "DoNotSchedule"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


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


def test_the_journal_lives_with_the_pod_and_no_volume_claim_is_shipped() -> None:
    """Issue 17: no PersistentVolumeClaim for the journal (a ReadWriteOnce volume cannot
    follow two replicas spread over nodes); each finished run is archived to the plan's
    records store instead (tests/e2e/test_operator_records.py: a run outlives the journal),
    which the Deployment says where the volume is declared."""
    [deployment] = docs("deployment.yaml")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    journal = next(e["value"] for e in container["env"] if e["name"] == "FAILOVER_JOURNAL")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    [state] = [name for name, path in mounts.items() if journal.startswith(path + "/")]
    assert {v["name"]: v for v in spec["volumes"]}[state] == {"name": state, "emptyDir": {}}
    assert "spec.records" in (DEPLOY / "deployment.yaml").read_text()
    shipped = [d for f in DEPLOY.glob("*.yaml") for d in docs(f.name)]
    assert not [d for d in shipped if d.get("kind") == "PersistentVolumeClaim"]


def test_kustomization_resources_exist() -> None:
    [kustomization] = docs("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists(), resource


def test_the_base_builds_with_kustomizes_default_load_restrictor() -> None:
    """`kubectl apply -k manifests/deploy` as the README says: no file outside the base is
    loaded directly (the CRD comes in as the kustomization manifests/crd)."""
    out = subprocess.run([kubectl_path(), "kustomize", str(DEPLOY)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
    assert {"CustomResourceDefinition", "Deployment", "ValidatingAdmissionPolicy"} <= kinds

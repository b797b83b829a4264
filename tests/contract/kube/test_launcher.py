"""The etcd + kube-apiserver launcher: identities, files, RBAC in effect, stop by PID."""

from __future__ import annotations

import os
import stat

from controller.drill.servers.kube import KubeServers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_identities_are_the_admin_and_the_projects_service_account(kube: KubeServers) -> None:
    assert kube.namespace == "failover-system"
    assert kube.identities["controller"].user == \
        "system:serviceaccount:failover-system:failover-controller"
    assert "system:masters" in kube.identities["admin"].groups
    for ident in kube.identities.values():
        assert stat.S_IMODE(ident.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(kube.kubeconfig("admin").stat().st_mode) == 0o600
    status, review = kube.request("POST", "/apis/authorization.k8s.io/v1/"
                                  "selfsubjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": "failover-system", "verb": "delete",
                                        "group": "networking.istio.io",
                                        "resource": "virtualservices"}}},
        identity="controller")
    assert status == 201 and review["status"]["allowed"] is False  # only what rbac.yaml says


def test_every_crd_is_served(kube: KubeServers) -> None:
    for path in ("/apis/failover.example.io/v1alpha1", "/apis/networking.istio.io/v1",
                 "/apis/gateway.networking.k8s.io/v1", "/apis/split.smi-spec.io/v1alpha2"):
        status, _ = kube.request("GET", path)
        assert status == 200, path


def test_stop_ends_both_processes_by_pid_and_removes_the_directory() -> None:
    servers = KubeServers().start()
    try:
        pids = [servers.pid("etcd"), servers.pid("kube-apiserver")]
        base = servers.base
        assert all(pid and _alive(pid) for pid in pids)
    finally:
        servers.stop()
    assert not any(pid and _alive(pid) for pid in pids)
    assert base is not None and not base.exists()

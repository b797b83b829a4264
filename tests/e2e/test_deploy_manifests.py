"""Issue 22 item 11: the shipped deployment, on the real kube-apiserver.

- The Deployment and its PodDisruptionBudget are accepted by the API server as shipped
  (server-side dry run: the real schemas and defaulting), the two replicas are spread
  over nodes (zones when there are several), the budget covers exactly their pods, and
  the grace period leaves room for the operator's bounded shutdown.
- Mesh objects in an application namespace: the controller is refused there (403, with
  the fix named) until that namespace binds the ClusterRole `failover-controller-target`
  with the shipped RoleBinding template; then the real traffic backend steers the route,
  and a namespace without the binding stays refused.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import registry
from controller.drill.servers.kube import KubeServers
from controller.model import PermanentError
from controller.operator import SHUTDOWN_SECONDS
from controller.secrets import Secrets

DEPLOY = Path(__file__).resolve().parents[2] / "manifests/deploy"
_N = itertools.count()


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_the_deployment_and_its_disruption_budget_are_accepted_as_shipped(
        kube: KubeServers) -> None:
    [deployment], [pdb] = docs("deployment.yaml"), docs("pdb.yaml")
    ns = deployment["metadata"]["namespace"]
    status, dep = kube.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments"
                                       "?dryRun=All", deployment)
    assert status == 201, dep
    status, budget = kube.request("POST", f"/apis/policy/v1/namespaces/{ns}/"
                                          "poddisruptionbudgets?dryRun=All", pdb)
    assert status == 201, budget
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert budget["spec"]["minAvailable"] == 1 and dep["spec"]["replicas"] == 2
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    host = spread["kubernetes.io/hostname"]
    assert host["whenUnsatisfiable"] == "DoNotSchedule" and host["maxSkew"] == 1
    assert host["labelSelector"]["matchLabels"].items() <= labels.items()
    assert "topology.kubernetes.io/zone" in spread
    assert pod["spec"]["terminationGracePeriodSeconds"] >= SHUTDOWN_SECONDS + 5


def smi(kube: KubeServers, ns: str) -> Any:
    return registry.build("traffic", "smi", {
        **kube.connection("controller"), "namespace": ns, "name": "shop",
        "destinations": {"dc-a": "shop-dc-a", "dc-b": "shop-dc-b"}}, secrets=Secrets())


def test_mesh_objects_in_an_application_namespace_need_its_target_binding(
        kube: KubeServers) -> None:
    admin = kube.kube("admin")
    apps, other = f"apps-{next(_N)}-{time.monotonic_ns()}", f"other-{time.monotonic_ns()}"
    for ns in (apps, other):
        status, reply = kube.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        assert status == 201, reply
        admin.create("split.smi-spec.io", "v1alpha2", ns, "trafficsplits", {
            "apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
            "metadata": {"name": "shop", "namespace": ns},
            "spec": {"service": "shop", "backends": [{"service": "shop-dc-a", "weight": 100},
                                                     {"service": "shop-dc-b", "weight": 0}]}})
    with pytest.raises(PermanentError, match=r"target-namespace\.yaml"):
        smi(kube, apps).current()

    [binding] = docs("target-namespace.yaml")
    binding["metadata"]["namespace"] = apps
    kube.apply([binding])
    backend = smi(kube, apps)
    deadline = time.monotonic() + 30
    while True:  # the RBAC authorizer learns of the binding a moment after it is created
        try:
            assert backend.current() == {"dc-a": 100, "dc-b": 0}
            break
        except PermanentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    backend.shift(to="dc-b", weights={"dc-a": 0, "dc-b": 100})
    split = admin.get("split.smi-spec.io", "v1alpha2", apps, "trafficsplits", "shop")
    assert [b["weight"] for b in split["spec"]["backends"]] == [0, 100]
    with pytest.raises(PermanentError, match='grant verb "get" on resource "trafficsplits"'):
        smi(kube, other).current()  # bound in apps only, never cluster-wide

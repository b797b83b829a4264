"""Issue 20, sharding: the sharded deployment overlay (manifests/deploy/overlays/sharded),
built with kustomize and accepted by the real kube-apiserver (server-side dry run).

Everything the base ships once (namespace, CRD, RBAC, ...), and per shard a Deployment of two
replicas given `--shard N/M` (every shard of one M, each once), whose topology spread and
PodDisruptionBudget select that shard's pods alone, so one node lost or drained never takes
a shard's leader and its standby at once.
"""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path
from typing import Any

import yaml

from controller.drill.servers.kube import KubeServers, kubectl_path
from controller.sharding import SHARD_LABEL, parse_shard

DEPLOY = Path(__file__).resolve().parents[2] / "manifests/deploy"
OVERLAY = DEPLOY / "overlays/sharded"
PER_SHARD = {"Deployment", "PodDisruptionBudget"}


def _built(where: Path) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl_path(), "kustomize", "--load-restrictor",
                          "LoadRestrictionsNone", str(where)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _accepted(kube: KubeServers, doc: dict[str, Any], path: str) -> dict[str, Any]:
    ns = doc["metadata"]["namespace"]
    status, reply = kube.request("POST", f"/apis/{path.format(ns=ns)}?dryRun=All", doc)
    assert status == 201, reply
    return dict(reply)


def test_two_shards_of_two_replicas_each_spread_and_budgeted_per_shard(
        kube: KubeServers) -> None:
    docs = _built(OVERLAY)
    shared = sorted((d["kind"], d["metadata"]["name"]) for d in docs
                    if d["kind"] not in PER_SHARD)
    base = sorted((d["kind"], d["metadata"]["name"]) for d in _built(DEPLOY)
                  if d["kind"] not in PER_SHARD)
    assert shared == base  # everything of the base, once
    kinds = collections.Counter(d["kind"] for d in docs if d["kind"] in PER_SHARD)
    assert kinds == {"Deployment": 2, "PodDisruptionBudget": 2}, kinds
    deployments = [_accepted(kube, d, "apps/v1/namespaces/{ns}/deployments")
                   for d in docs if d["kind"] == "Deployment"]
    budgets = [_accepted(kube, d, "policy/v1/namespaces/{ns}/poddisruptionbudgets")
               for d in docs if d["kind"] == "PodDisruptionBudget"]
    shards = {}
    for dep in deployments:
        pod = dep["spec"]["template"]
        args = pod["spec"]["containers"][0]["args"]
        shard = parse_shard(args[args.index("--shard") + 1])
        labels = pod["metadata"]["labels"]
        assert labels[SHARD_LABEL] == str(shard.index) and dep["spec"]["replicas"] == 2
        assert dep["spec"]["selector"]["matchLabels"][SHARD_LABEL] == str(shard.index)
        assert pod["spec"]["serviceAccountName"] == "failover-controller"
        for spread in pod["spec"]["topologySpreadConstraints"]:
            assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
            assert spread["labelSelector"]["matchLabels"][SHARD_LABEL] == labels[SHARD_LABEL]
        [budget] = [b for b in budgets
                    if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert budget["spec"]["minAvailable"] == 1
        shards[shard.index] = shard
    counts = {s.count for s in shards.values()}
    assert counts == {2} and sorted(shards) == [0, 1], shards

"""Mesh traffic shift benchmark on a local kube-apiserver: figures and ratios, not a timer.

    .venv/bin/python tests/benchmarks/bench_mesh.py [ROUNDS]            # script (default 200)
    .venv/bin/python -m pytest tests/benchmarks/bench_mesh.py -s        # same, 50 rounds

Starts etcd + kube-apiserver (controller.drill.servers.kube, RBAC on, the mesh CRDs of
tests/crds) and, for each mesh kind (Istio VirtualService, Gateway API HTTPRoute, SMI
TrafficSplit), measures in the same process, as the controller identity, against the same
object:

(a) baseline: a bare GET of the object (`Kube.get`);
(b) one weight write: `Kube.update` (GET + PUT with resourceVersion);
(c) the backend's shift (or revert, alternating so every round is a real change): a read
    of the current weights, then enable-first and drain writes = 1 GET + 2 PUTs (each
    write starts from the copy in hand; a stale one would be refused and re-read).

Rounds are interleaved (a, b, c, a, ...) so background load on the shared host hits each
figure alike; the first 5 rounds warm up and are dropped. Printed: p50 and p99 of each,
and (c)/(a) and (b)/(a) at p50.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller import registry  # noqa: E402
from controller.drill.servers.kube import KubeServers  # noqa: E402
from controller.secrets import Secrets  # noqa: E402

HOST = "reviews.prod.svc.cluster.local"
OBJECTS: dict[str, tuple[str, str, str, str, dict[str, Any], dict[str, Any]]] = {
    "istio": ("networking.istio.io", "v1", "virtualservices", "VirtualService",
              {"hosts": ["reviews"], "http": [{"name": "main", "route": [
                  {"destination": {"host": HOST, "subset": "dc-a"}, "weight": 100},
                  {"destination": {"host": HOST, "subset": "dc-b"}, "weight": 0}]}]},
              {"routes": ["main"], "destinations": {
                  "dc-a": {"host": HOST, "subset": "dc-a"},
                  "dc-b": {"host": HOST, "subset": "dc-b"}}}),
    "gateway": ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute",
                {"parentRefs": [{"name": "edge"}], "rules": [{"name": "shop", "backendRefs": [
                    {"name": "shop-dc-a", "port": 8080, "weight": 100},
                    {"name": "shop-dc-b", "port": 8080, "weight": 0}]}]},
                {"rules": ["shop"], "destinations": {"dc-a": {"name": "shop-dc-a"},
                                                     "dc-b": {"name": "shop-dc-b"}}}),
    "smi": ("split.smi-spec.io", "v1alpha2", "trafficsplits", "TrafficSplit",
            {"service": "shop", "backends": [{"service": "shop-dc-a", "weight": 100},
                                             {"service": "shop-dc-b", "weight": 0}]},
            {"destinations": {"dc-a": "shop-dc-a", "dc-b": "shop-dc-b"}}),
}
WARMUP = 5


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return (f"p50 {pct(values, 0.5) * 1000:7.2f} ms   p99 {pct(values, 0.99) * 1000:7.2f} ms"
            f"   max {max(values) * 1000:7.2f} ms")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with KubeServers(crds=[ROOT / "tests/crds"]) as kube:
        print(f"\nMesh traffic shift on a local kube-apiserver (etcd 3.4, RBAC on; started in "
              f"{kube.startup_seconds:.1f} s), {rounds} rounds each, as the controller")
        admin, ctl = kube.kube("admin"), kube.kube("controller")
        ns = kube.namespace
        for kind, (group, version, plural, kind_name, spec, options) in OBJECTS.items():
            name = f"bench-{kind}"
            admin.create(group, version, ns, plural, {
                "apiVersion": f"{group}/{version}", "kind": kind_name,
                "metadata": {"name": name, "namespace": ns}, "spec": spec})
            backend = registry.build("traffic", kind, {
                **kube.connection("controller"), "namespace": ns, "name": name, **options},
                secrets=Secrets())
            counter = [0]

            def touch(obj: dict[str, Any], counter: list[int] = counter) -> None:
                counter[0] += 1
                obj["metadata"].setdefault("annotations", {})["bench/round"] = str(counter[0])

            figures: dict[str, list[float]] = {"get": [], "update": [], "shift": []}
            get = partial(ctl.get, group, version, ns, plural, name)
            update = partial(ctl.update, group, version, ns, plural, name, touch)
            shift = partial(backend.shift, to="dc-b", weights={"dc-b": 100, "dc-a": 0})
            revert = partial(backend.revert, to={"dc-a": 100, "dc-b": 0})
            for i in range(rounds + WARMUP):
                samples = (timed(get), timed(update), timed(shift if i % 2 == 0 else revert))
                if i >= WARMUP:
                    for key, value in zip(figures, samples, strict=True):
                        figures[key].append(value)
            base = statistics.median(figures["get"])
            print(f" {kind_name} ({kind}):")
            print(f"  (a) baseline: bare GET of the object           {ms(figures['get'])}")
            print(f"  (b) one write: Kube.update (GET + PUT w/ rv)   {ms(figures['update'])}")
            print(f"  (c) shift/revert (1 GET + 2 PUT, enable first) {ms(figures['shift'])}")
            print(f"  ratio at p50: (c)/(a) = {statistics.median(figures['shift']) / base:.2f}x"
                  f";  (b)/(a) = {statistics.median(figures['update']) / base:.2f}x;  "
                  f"(c) p99/(a) p50 = {pct(figures['shift'], 0.99) / base:.2f}x")
            out[f"{kind}: get p50"] = base
            out[f"{kind}: shift p50"] = statistics.median(figures["shift"])
            out[f"{kind}: shift p99"] = pct(figures["shift"], 0.99)
        print(f"  conflicts met by the controller's own client: {ctl.conflicts}")
    return out


@pytest.mark.benchmark
def test_mesh_shift_figures() -> None:
    figures = run(50)
    assert all(v > 0 for v in figures.values())  # figures are printed; no timing asserted


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)

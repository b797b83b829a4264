"""A stepped traffic shift through a real HAProxy, driven by `failoverctl` as a user runs it.

The plan's traffic step moves 10 %, then 50 %, then 100 % of the traffic to the backup,
checking the backup's /health after each step; the HAProxy backend observes the split
actually served through the frontend after every change. A failing check at 50 % shifts
the traffic back to the original weights and fails the run with the percentage and the
check's reason. A stepped shift cancelled during its pause (the step's timeout, a lost
lease) leaves HAProxy exactly at the step it reached: no later command is sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import fencing, registry
from controller.backends import Backends
from controller.drill.servers.haproxy import HaproxyServers
from controller.plan import load_plan
from controller.secrets import Secrets
from controller.steps import StepContext
from controller.steps.traffic import Traffic
from tests.e2e.test_cli import cli

ORIGINAL = {"primary": 100, "backup": 0}


@pytest.fixture(scope="module")
def haproxy() -> Iterator[HaproxyServers]:
    with HaproxyServers() as servers:
        yield servers


@pytest.fixture
def edge(haproxy: HaproxyServers) -> HaproxyServers:
    haproxy.reset()
    return haproxy


def stepped_plan(tmp_path: Path, edge: HaproxyServers, *, timeout: str = "60s",
                 **params: Any) -> Path:
    plan: dict[str, Any] = {
        "apiVersion": "failover.example.io/v1alpha1",
        "kind": "FailoverPlan",
        "metadata": {"name": "edge-stepped"},
        "spec": {
            "sites": {"primary": {"name": "primary"}, "backup": {"name": "backup"}},
            "services": [{"name": "web", "core": True,
                          "probes": [{"kind": "http", "options": {"url": edge.url("/")}}]}],
            "backends": [{"name": "edge", "role": "traffic", "kind": "haproxy",
                          "options": edge.options(observe={"url": edge.url("/"),
                                                           "requests": 100})}],
            "steps": [{
                "name": "shift-traffic", "action": "traffic", "backend": "edge",
                "target": "1h", "timeout": timeout,
                "params": {"to": "backup", "weights": {"backup": 100, "primary": 0},
                           "steps": [10, 50, 100], "pause": "10ms",
                           "check": {"kind": "http", "options": {
                               "url": f"{edge.sites['backup'].url}/health"}},
                           **params},
            }],
        },
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def current(edge: HaproxyServers) -> dict[str, int]:
    backend = registry.build("traffic", "haproxy", edge.options(), secrets=Secrets())
    return dict(backend.current())


def test_the_observed_split_follows_each_step(tmp_path: Path, edge: HaproxyServers) -> None:
    plan, journal = stepped_plan(tmp_path, edge), tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "planned: move to the backup",
              "-o", "json", journal=journal)
    assert res.returncode == 0, res.stdout + res.stderr
    [step] = json.loads(res.stdout)["steps"]
    assert step["status"] == "succeeded"
    steps = step["evidence"]["steps"]
    print("\nobserved split after each step:")
    for s in steps:
        print(f"  {s['percent']:3d} % -> {s['observed']['bySite']}, check: {s['check']}")
    assert [s["percent"] for s in steps] == [10, 50, 100]
    assert [s["weights"] for s in steps] == [{"primary": 90, "backup": 10},
                                             {"primary": 50, "backup": 50},
                                             {"primary": 0, "backup": 100}]
    for s in steps:
        observed = s["observed"]
        assert observed["errors"] == 0 and sum(observed["bySite"].values()) == 100
        assert abs(observed["share"].get("backup", 0.0) - s["percent"]) <= 10, observed
        assert s["check"].endswith("/health: 200")
    assert current(edge) == {"primary": 0, "backup": 100}
    back = cli("failback", str(plan), "--yes", "--reason", "primary repaired", "-o", "json",
               journal=journal)
    assert back.returncode == 0, back.stdout + back.stderr
    assert current(edge) == ORIGINAL


def test_a_failing_check_at_50_percent_shifts_back_and_fails_with_the_reason(
        tmp_path: Path, edge: HaproxyServers) -> None:
    edge.set_health("backup", 503, after=1)  # healthy at the 10 % check, 503 at the 50 % one
    plan, journal = stepped_plan(tmp_path, edge), tmp_path / "j.db"
    res = cli("failover", str(plan), "--yes", "--reason", "planned: move to the backup",
              "-o", "json", journal=journal)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    [step] = report["steps"]
    assert step["status"] == "failed"
    assert step["attempts"] == 1  # permanent: not retried
    assert step["error"].startswith("step shift-traffic: the http check failed at 50% to "
                                    "backup: GET http://127.0.0.1:")
    assert step["error"].endswith("/health: status 503, expected 2xx; traffic shifted "
                                  "back to {'backup': 0, 'primary': 100}")  # as saved
    assert report["run"]["phase"] == "Failed"
    assert current(edge) == ORIGINAL


def test_a_stepped_shift_cancelled_in_its_pause_stays_at_the_step_reached(
        tmp_path: Path, edge: HaproxyServers) -> None:
    plan = load_plan(stepped_plan(tmp_path, edge, timeout="10m", pause="30s"))
    ctx = StepContext(plan=plan, run_id="r", level=1, backends=Backends(plan),
                      lookup_evidence=lambda run, step: {})
    step = plan.spec.steps[0]
    prepared = Traffic().prepare(step, ctx)
    fence = fencing.Fence(1, "e2e")
    box: dict[str, Any] = {}

    def work() -> None:  # as the executor runs a step: in a worker, under its fence
        with fencing.scope(fence):
            try:
                box["value"] = Traffic().apply(step, ctx, prepared)
            except BaseException as exc:
                box["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    first = {"primary": 90, "backup": 10}
    deadline = time.monotonic() + 30
    while current(edge) != first:  # the 10 % step is in place, and observed: now it pauses
        assert time.monotonic() < deadline and worker.is_alive(), box
        time.sleep(0.01)
    time.sleep(0.2)
    fence.cancel("the step's timeout passed")
    worker.join(5)
    assert not worker.is_alive(), "the shift went on after the cancel"
    assert isinstance(box.get("error"), fencing.Cancelled), box
    state = servers(edge)
    time.sleep(0.5)
    assert current(edge) == first  # exactly the step reached ...
    assert servers(edge) == state == {"web1": ("0", "90"), "web2": ("0", "10")}  # ... still


def servers(edge: HaproxyServers) -> dict[str, tuple[str, str]]:
    """Each server's admin state and weight, read from HAProxy out of band."""
    lines = edge.command(f"show servers state {edge.backend}").splitlines()
    header = next(ln[2:].split() for ln in lines if ln.startswith("# "))
    rows = [dict(zip(header, ln.split(), strict=False)) for ln in lines[2:] if ln.strip()]
    return {r["srv_name"]: (r["srv_admin_state"], r["srv_uweight"]) for r in rows}

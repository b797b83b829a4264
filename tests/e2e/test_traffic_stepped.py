"""A stepped traffic shift through a real HAProxy, driven by `failoverctl` as a user runs it.

The plan's traffic step moves 10 %, then 50 %, then 100 % of the traffic to the backup,
checking the backup's /health after each step; the HAProxy backend observes the split
actually served through the frontend after every change. A failing check at 50 % shifts
the traffic back to the original weights and fails the run with the percentage and the
check's reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import registry
from controller.drill.servers.haproxy import HaproxyServers
from controller.secrets import Secrets
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


def stepped_plan(tmp_path: Path, edge: HaproxyServers) -> Path:
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
                "target": "1h", "timeout": "60s",
                "params": {"to": "backup", "weights": {"backup": 100, "primary": 0},
                           "steps": [10, 50, 100], "pause": "10ms",
                           "check": {"kind": "http", "options": {
                               "url": f"{edge.sites['backup'].url}/health"}}},
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
    assert step["error"].endswith("/health: status 503, expected 2xx/3xx; traffic shifted "
                                  "back to {'backup': 0, 'primary': 100}")  # as saved
    assert report["run"]["phase"] == "Failed"
    assert current(edge) == ORIGINAL

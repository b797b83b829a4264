"""`failoverctl drill PLAN` against real servers always puts the world back (issue 21,
item 17): when a step after the traffic switch fails with the default `onFailure: abort`,
and when the drill is stopped by SIGTERM midway (a second SIGTERM does not cut the
cleanup short). It says what it put back, or what it could not.

The world is real: HAProxy in front of the two site apps (`drill.servers.haproxy`), driven
over its admin socket by the plan's `haproxy` traffic backend, and the services are probed
over HTTP through HAProxy. The failing step is a link test of a channel only dc-a serves
(its probe wants the body dc-a's app writes), so it passes before the switch and fails
after it. The CLI runs as a user runs it, in a subprocess; the test reads HAProxy's
weights back over the runtime API.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.drill.servers.haproxy import HaproxyServers

ROOT = Path(__file__).resolve().parents[2]
SWITCHED = {"web1": 0, "web2": 100}
ORIGINAL = {"web1": 100, "web2": 0}


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[HaproxyServers]:
    with HaproxyServers(base=tmp_path / "edge") as servers:
        yield servers


def weights(edge: HaproxyServers) -> dict[str, int]:
    """Each server's current weight, as HAProxy reports it."""
    return {server: int(edge.command(f"get weight {edge.backend}/{server}").split()[0])
            for server in ("web1", "web2")}


def plan_file(tmp_path: Path, edge: HaproxyServers, *, link_timeout: str,
              retries: int) -> Path:
    probe = {"kind": "http", "options": {"url": edge.url("/web"), "timeout": "1s"}}
    plan: dict[str, Any] = {
        "apiVersion": "failover.example.io/v1alpha1", "kind": "FailoverPlan",
        "metadata": {"name": "real-edge-drill"},
        "spec": {
            "sites": {"primary": {"name": "dc-a"}, "backup": {"name": "dc-b"}},
            "services": [
                {"name": "web", "core": True, "interval": "200ms", "probes": [probe]},
                {"name": "reports", "interval": "200ms", "probes": [{
                    "kind": "http", "options": {"url": edge.url("/reports"), "timeout": "1s",
                                                "bodyMatch": "^primary "}}]},
            ],
            "trigger": {"consecutiveFailures": 3, "window": "5s", "dwell": "500ms",
                        "cooldown": "1s"},
            "readinessInterval": "1h",
            "coordination": {"kind": "host", "options": {"lockDir": str(tmp_path / "locks")}},
            "backends": [{"name": "edge", "role": "traffic", "kind": "haproxy",
                          "options": {"socket": str(edge.socket), "backend": edge.backend,
                                      "servers": {"dc-a": ["web1"], "dc-b": ["web2"]}}}],
            "steps": [
                {"name": "redirect-traffic", "action": "traffic", "backend": "edge",
                 "timeout": "20s", "params": {"to": "dc-b", "weights": {"dc-b": 100,
                                                                        "dc-a": 0}}},
                {"name": "link-test", "action": "verify", "timeout": link_timeout,
                 "retries": retries, "params": {"services": ["web", "reports"]}},
            ],
        },
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def drill_argv(tmp_path: Path, plan: Path) -> list[str]:
    return [sys.executable, "-m", "controller", "--journal", str(tmp_path / "journal.db"),
            "drill", str(plan), "--out", str(tmp_path / "out")]


def test_a_failed_step_with_abort_is_still_failed_back(tmp_path: Path,
                                                       edge: HaproxyServers) -> None:
    assert weights(edge) == ORIGINAL
    plan = plan_file(tmp_path, edge, link_timeout="2s", retries=0)
    res = subprocess.run(drill_argv(tmp_path, plan), capture_output=True, text=True,
                         timeout=180, cwd=ROOT)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out  # the failover failed: the drill did not pass
    assert "FAIL failed over: phase Failed: step link-test failed" in out, out
    assert "PASS failed back: failback ended Healthy: revert-redirect-traffic put back" in out
    assert weights(edge) == ORIGINAL  # traffic is on dc-a again
    assert "Traceback" not in out


def test_sigterm_midway_fails_back_before_exiting(tmp_path: Path,
                                                 edge: HaproxyServers) -> None:
    plan = plan_file(tmp_path, edge, link_timeout="60s", retries=20)  # fails for a minute
    proc = subprocess.Popen(drill_argv(tmp_path, plan), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while weights(edge) != SWITCHED:  # the planned failover moved the traffic
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # impatient: must not cut the failback short
        stdout, stderr = proc.communicate(timeout=120)
    # the second one, whether it came while the world was put back (noted: "SIGTERM
    # again; still stopping …") or after, on the way out, never ends the process early
    assert proc.returncode == 143, stdout + stderr
    assert ("error: drill interrupted by SIGTERM; failback ended Healthy: "
            "revert-redirect-traffic put back") in stderr, stdout + stderr
    assert weights(edge) == ORIGINAL
    assert "Traceback" not in stderr

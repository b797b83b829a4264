"""The loop's /healthz, /readyz and /metrics, served by `failoverctl run --listen`."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from controller.drill.servers.base import free_port
from tests.e2e.test_cli import ROOT, file_plan


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_run_serves_health_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(tmp_path / "j.db"), "run",
         str(file_plan(tmp_path)), "--interval", "0.1", "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        metrics = ""
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                _, metrics = get(base + "/metrics")
            except OSError:
                continue
            if 'failover_core_availability_percent{plan="memory-drill"} 100.0' in metrics:
                break
        assert 'failover_core_availability_percent{plan="memory-drill"} 100.0' in metrics
        assert 'failover_plan_phase{phase="Healthy",plan="memory-drill"} 1.0' in metrics
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/nope")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)

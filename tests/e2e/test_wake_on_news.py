"""Issue 20: a failing probe round wakes the reconcile loop, so detection costs the probes'
own interval x consecutiveFailures (+ the dwell), never up to a tick more.

Both loops run with a long tick (20 s, a hundred times the probes' 200 ms interval), and
the failover must still be detected and started within the detection floor + 1 s of the
fault, read from the run's recorded `detectedAt` / `startedAt`:

- `failoverctl run PLAN --interval 20` (`controller/cli/loop.py`: `news.wait(tick)`);
- the operator with a 20 s tick against the real kube-apiserver (its probes queue the
  plan at once: `SharedProbes(on_news=queue.add)`).

Without the news both wait for their next tick (~20 s after they started).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal, Run
from controller.operator import LeaderConfig, Operator
from tests.e2e.test_cli import EXAMPLE, ROOT, file_plan
from tests.e2e.test_operator import delete, get, names, plan_body, until

TICK = 20.0
SLACK = 1.0  # over the floor: a cycle, the journal's writes, a loaded 2-core host


def _floor() -> float:
    """The example plan's detection floor: interval x consecutiveFailures + dwell."""
    spec = yaml.safe_load(EXAMPLE.read_text())["spec"]
    assert {s["interval"] for s in spec["services"]} == {"200ms"}
    assert spec["trigger"]["dwell"] == "500ms"
    return 0.2 * spec["trigger"]["consecutiveFailures"] + 0.5


def _started_soon(detected_at: float, started_at: float, fault: float) -> None:
    floor = _floor()
    assert detected_at - fault < floor + SLACK, (
        f"detected {detected_at - fault:.2f} s after the fault (floor {floor:g} s, tick "
        f"{TICK:g} s)")
    assert started_at - fault < floor + SLACK, (
        f"failover started {started_at - fault:.2f} s after the fault (floor {floor:g} s, "
        f"tick {TICK:g} s)")


def _runs(path: Path) -> list[Run]:
    journal = Journal(path)
    try:
        return journal.runs("memory-drill")
    finally:
        journal.close()


def test_run_with_a_long_tick_starts_the_failover_within_the_detection_floor(
        tmp_path: Path) -> None:
    plan, journal = file_plan(tmp_path), tmp_path / "j.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "--journal", str(journal), "run", str(plan),
         "--interval", str(TICK)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        # the journal is opened just before the probes start: from now on they run
        until("the journal opened", journal.exists, timeout=60)
        fault = time.time()
        testing.set_health("dc-a", False, state_file=str(tmp_path / "world.json"))
        runs = until("a failover run", lambda: _runs(journal), timeout=3 * TICK)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    [run] = runs
    assert run.kind == "failover" and run.requested_by == "controller", out
    _started_soon(run.detected_at, run.started_at, fault)


def test_operator_with_a_long_tick_starts_the_failover_within_the_detection_floor(
        kube: KubeServers, tmp_path: Path) -> None:
    admin, ns, name = kube.kube("admin"), kube.namespace, "news"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state))
    journal = Journal(tmp_path / "solo.db")
    op = Operator(kube.kube("controller"), namespace=ns, journal=journal, identity="solo",
                  leader=LeaderConfig(lease_name=f"news-{time.monotonic_ns()}",
                                      lease_duration=3, renew_deadline=2, retry_period=0.3),
                  tick=TICK, resync=300)
    stop = threading.Event()
    runner = threading.Thread(target=op.run, args=(stop,), daemon=True)
    runner.start()
    try:
        until("Healthy", lambda: (get(admin, ns, name).get("status") or {}).get(
            "phase") == "Healthy")
        fault = time.time()
        testing.set_health("dc-a", False, state_file=str(state))
        run = until("a failover run in the status", lambda: (
            get(admin, ns, name).get("status") or {}).get("run"), timeout=3 * TICK)
    finally:
        stop.set()
        runner.join(timeout=30)
        journal.close()
    assert run["kind"] == "failover" and run["requestedBy"] == "controller", run
    _started_soon(run["detectedAt"], run["startedAt"], fault)
    admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})  # by hand
    delete(kube, name)
    until("plan deleted", lambda: name not in names(admin, ns))

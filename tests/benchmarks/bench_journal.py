"""Journal benchmark at ~200 MiB: open time and per-tick query time, before and after the
schema-2 journal (indexes, quick_check only after an unclean close), plus the migration
and a prune. Figures, not a pass/fail timer.

    .venv/bin/python tests/benchmarks/bench_journal.py            # ~200 MiB (~2 min)
    .venv/bin/python tests/benchmarks/bench_journal.py 50         # ~50 MiB
    .venv/bin/python -m pytest tests/benchmarks/bench_journal.py -s   # ~20 MiB

"Before" is controller/journal.py as of BEFORE_REF (read with `git show`): it runs
`PRAGMA quick_check` on every open and filters the audit trail with `(? IS NULL OR
run_id=?)`, which no index serves. The history is written as a long-running controller
leaves it: 50 plans, each with finished failovers and failbacks (steps, approvals,
audit rows, requests) and a decision per change; one plan has a run in progress, whose
tick reads its plan state, active run, steps, approvals, audit trail, the pending
request and the newest decision. Times are medians; the OS page cache is warm (the
figure a restarted controller on a busy host sees is no better).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from controller import journal as after_module  # noqa: E402

BEFORE_REF = "f3e53c0"  # the last commit with the schema-1 journal
PLANS = 50
STEPS = ["notify-incident", "redirect-traffic", "dns-cutover", "link-test", "restore-db",
         "announce"]


def before_module(tmp: Path) -> ModuleType | None:
    try:
        source = subprocess.run(["git", "show", f"{BEFORE_REF}:controller/journal.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no 'before' figures: cannot read {BEFORE_REF}:controller/journal.py: {exc})")
        return None
    path = tmp / "journal_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("journal_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def build(path: Path, module: ModuleType, mib: int) -> str:
    """Write ~`mib` MiB of history with plain SQLite into a journal created by `module`;
    return the id of the run in progress."""
    module.Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    # per plan and run pair: ~2 x (6 steps + 25 audit rows); decisions fill the rest
    runs_per_plan = max(4, mib * 2)
    decisions_per_plan = max(100, mib * 1024 * 1024 // PLANS // 165 - runs_per_plan * 40)
    detail = "im -> @all, sms:broadcast (within 30m of detection: met) [notice {:016x}]"
    evidence = json.dumps({"before": {"dc-a": 100, "dc-b": 0}, "after": {"dc-a": 0, "dc-b": 100},
                           "prepared": True, "fencing": [{"token": 1, "holder": "ctl-1"}] * 4})
    t = 1_600_000_000.0
    for p in range(PLANS):
        plan = f"plan-{p:03d}"
        runs, steps, audit, requests, approvals = [], [], [], [], []
        for r in range(runs_per_plan):
            at = t + r * 3600
            kind = "failover" if r % 2 == 0 else "failback"
            run_id = f"{plan}-{kind}-{int(at)}-{r:06x}"
            phase = "FailedOver" if kind == "failover" else "Healthy"
            runs.append((run_id, plan, kind, phase, 1, "tripped: web down: 3 failed probes",
                         "controller", at - 5, at, at + 60, 1, "all steps succeeded",
                         json.dumps([{"name": s, "action": "notify"} for s in STEPS])))
            for i, name in enumerate(STEPS):
                steps.append((run_id, i, name, "notify", "succeeded", 600.0, at, at + 1, 1.0,
                              6.0, 1, 1, evidence, None, None))
            audit += [(at + i, "controller", "notify", plan, run_id, detail.format(i))
                      for i in range(25)]
            requests.append((plan, kind, "oncall", "drill", at - 1, None, run_id))
            approvals.append((run_id, "", "oncall", at))
        db.executemany("INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
                       "detected_at, started_at, finished_at, approved, outcome, steps_json) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        db.executemany("INSERT INTO steps (run_id, idx, name, action, status, target_s, "
                       "started_at, finished_at, elapsed_s, since_detection_s, met, attempts, "
                       "evidence, error, approved_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       steps)
        db.executemany("INSERT INTO audit (at, actor, action, plan, run_id, detail) "
                       "VALUES (?,?,?,?,?,?)", audit)
        db.executemany("INSERT INTO requests (plan, kind, actor, reason, at, level, run_id) "
                       "VALUES (?,?,?,?,?,?,?)", requests)
        db.executemany("INSERT INTO approvals (run_id, step, actor, at) VALUES (?,?,?,?)",
                       approvals)
        db.executemany("INSERT INTO decisions (plan, at, action, level, sentence) "
                       "VALUES (?,?,?,?,?)",
                       [(plan, t + i * 30.0, "none", None,
                         f"degraded: web down: 3 failed probes in a row (threshold 3) for "
                         f"{i % 90}.0 s (HTTP 503); availability 66 % < 70 %")
                        for i in range(decisions_per_plan)])
        db.commit()
    # one plan in the middle of a run (last in time, so the tick's queries find it)
    plan, at = "plan-025", t + runs_per_plan * 3600 + 10
    active = f"{plan}-failover-{int(at)}-active"
    db.execute("INSERT INTO runs (id, plan, kind, phase, level, reason, requested_by, "
               "detected_at, started_at, approved, steps_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
               (active, plan, "failover", "FailingOver", 1, "tripped", "controller", at - 5,
                at, 1, json.dumps([{"name": s, "action": "notify"} for s in STEPS])))
    for i, name in enumerate(STEPS):
        db.execute("INSERT INTO steps (run_id, idx, name, action, status) "
                   "VALUES (?,?,?,?,'pending')", (active, i, name, "notify"))
    db.execute("INSERT INTO plan_state (plan, phase, level, active_site, last_decision, "
               "policy, updated_at) VALUES (?,?,?,?,?,?,?)",
               (plan, "FailingOver", 1, "dc-a", "tripped", "{}", at))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return active


def median_time(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tick_queries(journal: Any, plan: str, run_id: str) -> None:
    """The reads one tick of a run in progress makes (Engine.tick/_advance/_notify)."""
    journal.plan_state(plan)
    journal.active_run(plan)
    journal.run(run_id)
    journal.steps(run_id)
    journal.approvals_at(run_id, "")
    journal.audit_trail(run_id=run_id)
    journal.pending_request(plan)
    journal.decisions(plan, limit=1)


def measure(label: str, module: ModuleType, path: Path, run_id: str) -> dict[str, float]:
    def open_close() -> None:
        module.Journal(path).close()

    open_s = median_time(open_close, 5)
    journal = module.Journal(path)
    tick_s = median_time(lambda: tick_queries(journal, "plan-025", run_id), 30)
    journal.close()
    print(f"{label:<7} open {open_s * 1000:8.1f} ms   one tick's queries "
          f"{tick_s * 1000:8.2f} ms")
    return {"open": open_s, "tick": tick_s}


def run(mib: int = 200) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    try:
        before = before_module(tmp)
        path = tmp / "journal.db"
        start = time.perf_counter()
        active = build(path, before or after_module, mib)
        size = path.stat().st_size / 2**20
        print(f"journal: {size:.0f} MiB ({PLANS} plans; written in "
              f"{time.perf_counter() - start:.0f} s)")
        figures: dict[str, Any] = {"size_mib": size}
        if before is not None:
            figures["before"] = measure("before", before, path, active)
            start = time.perf_counter()
            after_module.Journal(path).close()  # first open: full check + migration
            print(f"migration to schema {after_module.SCHEMA_VERSION} (with the full check "
                  f"an upgrade runs once): {time.perf_counter() - start:.1f} s")
        figures["after"] = measure("after", after_module, path, active)
        journal = after_module.Journal(path)
        start = time.perf_counter()
        pruned = journal.prune(before=1_600_000_000.0 + mib * 3600.0, force=True)
        journal.close()
        print(f"prune (force) of the older half: {len(pruned.runs)} runs, "
              f"{pruned.decisions} decisions in {time.perf_counter() - start:.1f} s")
        figures["after_prune"] = measure("pruned", after_module, path, active)
        if before is not None:
            b, a = figures["before"], figures["after"]
            print(f"open {b['open'] / a['open']:.0f}x faster; a tick's queries "
                  f"{b['tick'] / a['tick']:.0f}x faster")
        return figures
    finally:
        shutil.rmtree(tmp)


@pytest.mark.benchmark
def test_journal_figures() -> None:
    figures = run(20)
    assert figures["after"]["open"] > 0  # figures are printed; no timing is asserted


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)

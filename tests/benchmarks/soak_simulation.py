"""Soak the deterministic simulation of issue 14: a million seeded schedules (by default)
in one worker process per CPU, with figures as it goes and at the end.

Each schedule runs the real engine, executor, journal and policy with the in-memory
backends under the simulated clock and scheduler of `tests/reliability/sim`, with replicas,
CLI processes, crashes, pauses, partitions, slow/hanging/down backends and requests at
random moments, checking the invariants after every event. Prints schedules per second,
events, world writes, runs, faults injected, how often each invariant had work to do,
violations by kind and the seeds that failed (each replays with
`FAILOVER_SIM_SEED=<seed> .venv/bin/python -m pytest tests/reliability/test_simulation.py`).
With `--operator` it soaks the operator simulation instead (issue 22: real `Operator`
replicas over the in-memory API server, with leader changes, plans deleted and created
again, failing status writes; replay with `tests/reliability/test_simulation_operator.py`).
Exit status 1 when any schedule broke an invariant.

    .venv/bin/python tests/benchmarks/soak_simulation.py [--schedules N] [--start SEED]
        [--workers N] [--report FILE] [--operator]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.reliability.sim.runner import Summary, run_many  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=1_000_000,
                        help="how many seeded schedules (default 1,000,000)")
    parser.add_argument("--start", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per CPU)")
    parser.add_argument("--every", type=float, default=30.0,
                        help="seconds between progress lines (default 30)")
    parser.add_argument("--report", type=Path,
                        help="write every failing schedule's full report to this file")
    parser.add_argument("--operator", action="store_true",
                        help="the operator simulation (tests/reliability/sim/operators.py)")
    args = parser.parse_args(argv)
    if args.schedules < 1:
        parser.error("--schedules must be at least 1")
    last = [time.perf_counter()]

    def progress(summary: Summary) -> None:
        now = time.perf_counter()
        if now - last[0] >= args.every:
            last[0] = now
            print(f"... {summary.figures()}", flush=True)

    seeds = range(args.start, args.start + args.schedules)
    load = os.getloadavg()[0]
    print(f"soaking {'operator ' if args.operator else ''}seeds {seeds.start}.."
          f"{seeds.stop - 1} "
          f"({args.workers or os.cpu_count()} worker processes; load average {load:.1f} "
          "before)", flush=True)
    summary = run_many(seeds, workers=args.workers, progress=progress,
                       operator=args.operator, chunk=10 if args.operator else 50)
    print(f"done: {summary.figures()}; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} at the end (this run's workers included)")
    rate = summary.schedules / summary.wall_seconds if summary.wall_seconds else 0.0
    print(f"schedules/s: {rate:.1f}; events/s: "
          f"{summary.events / summary.wall_seconds if summary.wall_seconds else 0:.0f}; "
          f"mean events per schedule: {summary.events / max(summary.schedules, 1):.0f}; "
          f"simulated seconds per wall second: "
          f"{summary.sim_seconds / summary.wall_seconds if summary.wall_seconds else 0:.0f}")
    if summary.failed:
        seeds_failed = sorted(summary.failed)
        print(f"seeds that failed ({len(seeds_failed)}):")
        for seed in seeds_failed[:200]:
            print(f"  {seed}: {summary.failed[seed][1].splitlines()[0]}")
        if len(seeds_failed) > 200:
            print(f"  ... and {len(seeds_failed) - 200} more")
        if args.report is not None:
            args.report.write_text("\n\n".join(summary.failed[s][1] for s in seeds_failed))
            print(f"full reports: {args.report}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

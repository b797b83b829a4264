"""Run many simulated schedules in worker processes and sum up what they found.

The schedules are the plan-file simulation's (`harness`) or, with `operator=True`, the
operator simulation's (`operators`).

Each worker (forked, so it shares the parsed plans) runs chunks of consecutive seeds and
returns counts and, for each violating seed, its kind and full report; a harness failure
(the simulation itself broke) is reported the same way under the kind "harness". The
result is a `Summary`: schedules, events, writes, runs, simulated seconds, wall seconds,
and the violations by seed.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

CHUNK = 50


@dataclass
class Summary:
    schedules: int = 0
    events: int = 0
    writes: int = 0
    runs: int = 0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    counts: Counter[str] = field(default_factory=Counter)
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # seed -> (kind, report)

    @property
    def violations(self) -> int:
        return len(self.failed)

    def add(self, other: Summary) -> None:
        self.schedules += other.schedules
        self.events += other.events
        self.writes += other.writes
        self.runs += other.runs
        self.sim_seconds += other.sim_seconds
        self.counts.update(other.counts)
        self.failed.update(other.failed)

    def kinds(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.failed.values())

    def figures(self) -> str:
        rate = self.schedules / self.wall_seconds if self.wall_seconds else 0.0
        kinds = ", ".join(f"{k}: {n}" for k, n in self.kinds().most_common()) or "none"
        return (f"{self.schedules} schedules in {self.wall_seconds:.1f} s ({rate:.0f}/s); "
                f"{self.events} events, {self.writes} world writes, {self.runs} runs, "
                f"{self.sim_seconds / 3600:.1f} simulated hours; faults: "
                f"{dict(sorted(self.counts.items()))}; violations: {self.violations} "
                f"({kinds})")


def run_chunk(seeds: list[int], operator: bool = False) -> Summary:
    if operator:
        from tests.reliability.sim.operators import run_operator_schedule as run_schedule
    else:
        from tests.reliability.sim.harness import run_schedule

    out = Summary()
    for seed in seeds:
        try:
            result = run_schedule(seed)
        except Exception:  # the simulation itself broke: as loud as a violation
            out.schedules += 1
            out.failed[seed] = ("harness", f"simulated schedule {seed}: the harness failed:\n"
                                f"{traceback.format_exc()}")
            continue
        out.schedules += 1
        out.events += result.slices
        out.writes += result.writes
        out.runs += result.runs
        out.sim_seconds += result.sim_seconds
        out.counts.update(result.counts)
        if result.violation is not None:
            out.failed[seed] = (result.violation.kind, result.report())
    return out


def _init_worker() -> None:
    from tests.reliability.sim import harness, scheduler

    scheduler._POOL.clear()  # the parent's parked threads did not survive the fork
    harness.forget_inherited()  # nor do the parent's journal files belong to this process
    multiprocessing.util.Finalize(None, harness.remove_files, exitpriority=10)


def _chunks(seeds: Iterable[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for seed in seeds:
        chunk.append(seed)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_many(seeds: Iterable[int], *, workers: int | None = None, chunk: int = CHUNK,
             progress: Callable[[Summary], None] | None = None,
             operator: bool = False) -> Summary:
    """Run every seed; `workers` processes (default: one per CPU)."""
    workers = workers or os.cpu_count() or 1
    run = partial(run_chunk, operator=operator)
    total = Summary()
    started = time.perf_counter()
    if workers == 1:
        for part in _chunks(seeds, chunk):
            total.add(run(part))
            total.wall_seconds = time.perf_counter() - started
            if progress is not None:
                progress(total)
        return total
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        for done in pool.imap_unordered(run, _chunks(seeds, chunk)):
            total.add(done)
            total.wall_seconds = time.perf_counter() - started
            if progress is not None:
                progress(total)
        pool.close()  # the workers exit on their own, removing their journal files
        pool.join()
    total.wall_seconds = time.perf_counter() - started
    return total

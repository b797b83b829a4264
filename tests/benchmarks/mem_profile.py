"""Where one operator replica's memory goes: after its imports, and per FailoverPlan.

    .venv/bin/python tests/benchmarks/mem_profile.py [--plans 1000] [--settle 40]
                                                     [--frames 1] [--no-trace] [--top 25]

Starts a real kube-apiserver + etcd (as `bench_operator.py` does), runs `failoverctl
operator` (tick 1 s) in a child process with `tracemalloc` on (unless `--no-trace`),
and takes two snapshots: once the operator leads with no plan, and `--settle` seconds
after `--plans` quiet plans (`bench_operator.quiet_plan`) all have a first status. It
prints the child's RSS after its imports, at 0 plans and at N plans, and the biggest
differences between the snapshots (by source line, `--frames` deep, and by file) in
bytes per plan. tracemalloc slows the operator and costs memory of its own: read RSS
from a `--no-trace` run, where the Python allocations come from a traced one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the operator's process, run as `mem_profile.py --child OUTDIR FRAMES failoverctl-args` ----


def child(out: Path, frames: int, argv: list[str]) -> None:
    """Run failoverctl; on SIGUSR1 write snapshot-K.pickle (when tracing) and rss-K."""
    if frames:
        tracemalloc.start(frames)
    taken = iter(range(1000))

    def snapshot(*_: object) -> None:
        k = next(taken)
        import gc

        gc.collect()
        if frames:
            tracemalloc.take_snapshot().dump(str(out / f"snapshot-{k}.pickle"))
        (out / f"rss-{k}").write_text(f"{rss_mib():.1f}")

    signal.signal(signal.SIGUSR1, snapshot)
    sys.argv = ["failoverctl", *argv]
    import controller.operator  # noqa: F401  (imported by the command: counted here)
    from controller.cli import main as cli

    (out / "rss-imports").write_text(f"{rss_mib():.1f}")
    cli()


# --- the driver ---------------------------------------------------------------------------------


def wait_for(path: Path, proc: subprocess.Popen[bytes], limit: float = 300.0) -> str:
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {path.name} from the operator (exit {proc.poll()})")
        time.sleep(0.2)
    time.sleep(0.5)  # a snapshot file is complete once rss-K (written after it) exists
    return path.read_text()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=40.0,
                    help="seconds after every plan has a first status")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth kept")
    ap.add_argument("--no-trace", action="store_true", help="RSS only, no tracemalloc")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), args.child[2:])
        return

    frames = 0 if args.no_trace else args.frames
    work = Path(tempfile.mkdtemp(prefix="mem-profile-"))
    try:
        measure(args, frames, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, frames: int, work: Path) -> None:
    from bench_operator import create, quiet_plan, running  # type: ignore[import-not-found]

    from controller.crd import GROUP, PLURAL, VERSION
    from controller.drill.servers.kube import KubeServers

    with KubeServers() as kube:
        admin, ns = kube.kube("admin"), kube.namespace
        argv = [sys.executable, __file__, "--child", str(work), str(frames),
                "--journal", str(work / "j.db"), "operator", "--namespace", ns,
                "--kubeconfig", str(kube.kubeconfig("controller")), "--identity", "mem"]
        with running(argv, work / "operator.log") as proc:
            imports = wait_for(work / "rss-imports", proc)
            time.sleep(15)  # leads (its Lease), synced, idle
            proc.send_signal(signal.SIGUSR1)
            rss0 = wait_for(work / "rss-0", proc)
            names = [f"plan-{i:05d}" for i in range(args.plans)]
            create(admin, ns, [quiet_plan(n) for n in names])
            began = time.monotonic()
            while sum(1 for o in admin.list(GROUP, VERSION, ns, PLURAL).items
                      if (o.get("status") or {}).get("phase")) < len(names):
                if proc.poll() is not None:
                    raise SystemExit((work / "operator.log").read_text()[-3000:])
                time.sleep(1)
            print(f"first status on {len(names)} plans after "
                  f"{time.monotonic() - began:.0f} s", flush=True)
            time.sleep(args.settle)
            proc.send_signal(signal.SIGUSR1)
            rss1 = wait_for(work / "rss-1", proc)
            threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    n = max(1, args.plans)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; tracemalloc "
          f"{'off' if not frames else f'on ({frames} frames)'}")
    print(f"RSS after imports {imports} MiB; leading, 0 plans {rss0} MiB; "
          f"{args.plans} plans {rss1} MiB: {1024 * (float(rss1) - float(rss0)) / n:.1f} KiB "
          f"per plan; {threads} threads")
    if not frames:
        return
    before = tracemalloc.Snapshot.load(str(work / "snapshot-0.pickle"))
    after = tracemalloc.Snapshot.load(str(work / "snapshot-1.pickle"))
    total = sum(s.size for s in after.statistics("filename")) - sum(
        s.size for s in before.statistics("filename"))
    print(f"Python allocations (tracemalloc) grew {total / 2**20:.1f} MiB: "
          f"{total / n:.0f} bytes per plan")
    print(f"\ntop {args.top} source lines by growth (bytes per plan, blocks per plan)")
    for stat in after.compare_to(before, "traceback" if frames > 1 else "lineno")[:args.top]:
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in stat.traceback)
        print(f"  {stat.size_diff / n:9.0f} B {stat.count_diff / n:7.1f}  {where}")
    by_file: dict[str, int] = defaultdict(int)
    for stat in after.compare_to(before, "filename"):
        by_file[_short(stat.traceback[0].filename)] += stat.size_diff
    print(f"\ntop {args.top} files by growth (bytes per plan)")
    for file, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {size / n:9.0f} B  {file}")


def _short(file: str) -> str:
    for marker in ("site-packages/", "python3.11/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


if __name__ == "__main__":
    main()

"""A CPU-weighted sampling profile of every thread of a `failoverctl` process.

    python tests/benchmarks/cpu_profile.py [--from-start] OUT.json failoverctl-args...

runs `failoverctl` with one extra thread that, every 5 ms, reads each thread's own CPU
clock (`pthread_getcpuclockid`) and charges the CPU time it used since the last sample
to the stack it is in now — so a thread waiting on a lock, a socket or the GIL costs
nothing, unlike a wall-clock sampler. No dependency beyond the standard library, and no
tracing of every call (cProfile would double the cost it measures). SIGUSR1 starts the
window (counts reset), SIGUSR2 writes OUT.json, which `bench_operator.py` summarises:
CPU seconds by what the thread was doing (`WHAT`, the outermost match: a reconcile, a
status write, the watch, the probe loop ...) and by the layer the time is spent in
(`LAYER`, the innermost match: SQLite, the kube client, JSON, the policy ...), plus the
top functions by self time, where the workers wait (wall time while their CPU clock
stood still), the garbage collections (count, time, longest pause per
generation) and the sampler's own CPU (it runs only from the first
SIGUSR1 on, or from the start with `--from-start`, and the benchmark subtracts it).
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.005

# what the thread is doing: the first label (in this order) with a frame matching
# (file part, function; "" matches any)
WHAT = [
    ("status write (mirror)", "controller/operator_status.py", "mirror"),
    ("status write (mirror)", "controller/operator_status.py", "write"),
    ("plan runtime (parse, engine, probes start)", "controller/operator.py", "_runtime"),
    ("engine tick", "controller/loop.py", "tick"),
    ("engine tick", "controller/loop.py", "reconcile"),
    ("finalizer, claims, events", "controller/operator_status.py", "patch"),
    ("finalizer, claims, events", "controller/operator_status.py", "event"),
    ("finalizer, claims, events", "controller/operator_requests.py", ""),
    ("reconcile (the rest)", "controller/operator.py", "reconcile"),
    ("watch", "controller/operator.py", "_watch"),
    ("leader election", "controller/operator.py", "_elect"),
    ("leader election", "controller/operator.py", "_reader"),
    ("ticker", "controller/operator.py", "_ticker"),
    ("work queue", "controller/operator.py", "_work"),
    ("probe loop", "controller/probes/", ""), ("probe loop", "asyncio/", ""),
]
# where the time is spent: the innermost frame whose file matches
LAYER = [
    ("journal (SQLite)", "controller/journal"), ("policy", "controller/policy"),
    ("status build/diff", "controller/status.py"), ("metrics", "prometheus_client/"),
    ("metrics", "controller/metrics"), ("logging", "logging/"),
    ("kube client (HTTP, TLS)", "urllib3/"), ("kube client (HTTP, TLS)", "ssl.py"),
    ("kube client (HTTP, TLS)", "http/client"), ("kube client (models)", "kubernetes/"),
    ("json", "json/"), ("kube client (ours)", "controller/kube"),
    ("plan parsing (pydantic)", "pydantic"), ("plan parsing (pydantic)", "controller/plan"),
    ("probes", "controller/probes/"), ("asyncio loop", "asyncio/"),
    ("engine", "controller/engine/"), ("engine", "controller/loop.py"),
    ("operator", "controller/operator"), ("operator", "controller/workqueue"),
    ("threading", "threading.py"), ("copy", "copy.py"),
]


def _stack(frame: FrameType | None) -> list[tuple[str, str]]:
    out = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_code.co_name))
        frame = frame.f_back
    return out  # innermost first


def _what(stack: list[tuple[str, str]]) -> str:
    for label, part, name in WHAT:
        if any(part in file and (not name or fn == name) for file, fn in stack):
            return label
    return "other"


def _waiting(stack: list[tuple[str, str]]) -> str:
    """Where a waiting worker waits: the innermost frame of ours (controller/) and the
    innermost frame of all."""
    ours = next((f"{_short(file)}:{fn}" for file, fn in stack if "/controller/" in file), "")
    file, fn = stack[0] if stack else ("", "")
    return f"{ours} <- {_short(file)}:{fn}"


def _layer(stack: list[tuple[str, str]]) -> str:
    for file, _ in stack:
        for label, part in LAYER:
            if part in file:
                return label
    return "other"


class Sampler:
    def __init__(self) -> None:
        self.what: Counter[str] = Counter()
        self.layer: Counter[str] = Counter()
        self.functions: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()  # wall seconds the workers waited, by where
        self.started = time.monotonic()
        self.own0 = 0.0
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        # garbage collections by generation: [count, seconds in all, the longest]; a full
        # one holds every thread (a latency tail's usual suspect)
        self.gc: dict[int, list[float]] = {}
        self._gc_started = 0.0
        gc.callbacks.append(self._collected)

    def _collected(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        seen = self.gc.setdefault(info["generation"], [0, 0.0, 0.0])
        seen[0] += 1
        seen[1] += took
        seen[2] = max(seen[2], took)

    def _own(self) -> float:
        assert self._thread.ident is not None
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def reset(self) -> None:
        if self._thread.ident is None:  # started with the first window: no cost before
            self._thread.start()
        with self._lock:
            self.what.clear()
            self.layer.clear()
            self.functions.clear()
            self.waits.clear()
            self.gc.clear()
            self.started, self.own0 = time.monotonic(), self._own()

    def _run(self) -> None:
        me = threading.get_ident()
        while True:
            time.sleep(INTERVAL)
            workers = {t.ident for t in threading.enumerate() if t.name.startswith("worker")}
            with self._lock:
                for ident, frame in sys._current_frames().items():
                    if ident == me:
                        continue
                    try:
                        cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
                    except OSError:  # the thread ended meanwhile
                        continue
                    used = cpu - self._last.get(ident, cpu)
                    self._last[ident] = cpu
                    stack = _stack(frame)
                    if used <= 0:
                        if ident in workers:  # a worker's wall time: where it waits
                            self.waits[_waiting(stack)] += INTERVAL
                        continue
                    self.what[_what(stack)] += used
                    self.layer[_layer(stack)] += used
                    if stack:
                        file, fn = stack[0]
                        self.functions[f"{_short(file)}:{fn}"] += used

    def write(self, path: Path) -> None:
        with self._lock:
            data = {"seconds": time.monotonic() - self.started,
                    "sampler_cpu": self._own() - self.own0,
                    "what": dict(self.what), "layer": dict(self.layer),
                    "functions": dict(self.functions.most_common(15)),
                    "waits": dict(self.waits.most_common(12)),
                    "gc": {str(gen): seen for gen, seen in sorted(self.gc.items())}}
        part = path.with_suffix(".part")
        part.write_text(json.dumps(data))
        part.replace(path)  # whole or not at all: the benchmark reads it once it exists


def _short(file: str) -> str:
    for marker in ("site-packages/", "python3.11/", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def main() -> None:
    args = sys.argv[1:]
    from_start = args[:1] == ["--from-start"]
    out = Path(args[1 if from_start else 0])
    sampler = Sampler()
    if from_start:
        sampler.reset()
    signal.signal(signal.SIGUSR1, lambda *_: sampler.reset())
    signal.signal(signal.SIGUSR2, lambda *_: sampler.write(out))
    sys.path.insert(0, str(ROOT))
    sys.argv = ["failoverctl", *args[2 if from_start else 1:]]
    from controller.cli import main as cli

    cli()


if __name__ == "__main__":
    main()

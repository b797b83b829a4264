"""Health traces: recorded or synthetic timestamped samples, for replay through the policy.

A trace is JSON Lines. An optional first line holds the header, every other line one
sample:

    {"trace": "clean-outage", "start": 1700000000, "plan": "plan.yaml",
     "description": "...", "expect": {"trip": true, "by": 80, "notBefore": 60, "level": 1,
                                      "peakLevel": 1}}
    {"t": 0.0, "service": "api", "ok": true, "latency": 0.012, "detail": "200"}
    {"t": 2.0, "service": "complaints", "ok": true, "value": 180}

`t` is seconds after `start` (or give `at`, absolute epoch seconds). `expect` is the
label of a corpus trace: "must trip by T (not before N) at level L (reaching level P)" or
"must not trip" (the level rises while tripped as the evidence grows: `peakLevel` is the
most severe the first trip reached);
`plan` names the plan file the label assumes, relative to the trace. A CSV trace (header
row with t|at, service, ok, latency, detail, value) carries samples only. A sample the
controller could not judge (a timeout while it was late) carries `"inconclusive": true`
and stays `"ok": false`; the policy weighs it on replay as it did live.

`ticks` turns a trace into the (now, new samples) batches a live reconcile loop would have
seen (each sample when its probe answered; a cycle at a fixed tick and at once on news),
so a replay exercises the same time-dependent rules (dwell, window) at the same instants
as a live run; `Expectation.verify` judges the trips a replay produced. `write` and
`synthesize` produce traces (the corpus under tests/traces/ is built with them), and
`Recorder` is a scheduler sink that appends live samples to a trace file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.model import Sample

_TRUE = {"1", "true", "yes", "up", "ok"}
_FALSE = {"0", "false", "no", "down", "fail", "failed"}


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file, line and problem."""


@dataclass(frozen=True)
class Expectation:
    """A corpus label: trip (by `by` s, not before `not_before` s, at `level`, reaching
    `peak_level` while tripped) or not."""

    trip: bool
    by: float | None = None
    not_before: float | None = None
    level: int | None = None
    peak_level: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Expectation:
        unknown = set(data) - {"trip", "by", "notBefore", "level", "peakLevel"}
        if unknown or not isinstance(data.get("trip"), bool):
            raise ValueError("expect needs trip: true|false and only by, notBefore, level, "
                             "peakLevel")
        exp = cls(trip=data["trip"], by=data.get("by"), not_before=data.get("notBefore"),
                  level=data.get("level"), peak_level=data.get("peakLevel"))
        if not exp.trip and (exp.by is not None or exp.level is not None
                             or exp.peak_level is not None):
            raise ValueError("a must-not-trip label cannot name `by`, `level` or `peakLevel`")
        return exp

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trip": self.trip}
        for key, value in (("by", self.by), ("notBefore", self.not_before),
                           ("level", self.level), ("peakLevel", self.peak_level)):
            if value is not None:
                out[key] = value
        return out

    def describe(self) -> str:
        if not self.trip:
            return "must not trip"
        parts = ["must trip"]
        if self.by is not None:
            parts.append(f"by {self.by:g} s")
        if self.not_before is not None:
            parts.append(f"not before {self.not_before:g} s")
        if self.level is not None:
            parts.append(f"at level {self.level}")
        if self.peak_level is not None:
            parts.append(f"reaching level {self.peak_level}")
        return " ".join(parts)

    def verify(self, trips: list[tuple[float, int | None]], peak: int | None = None
               ) -> list[str]:
        """Problems with a replay's trips [(seconds after start, level)] and the most
        severe level the first trip reached (`peak`); [] = label met."""
        if not self.trip:
            return [f"tripped at {t:g} s (level {lvl}) but {self.describe()}"
                    for t, lvl in trips[:1]]
        if not trips:
            return [f"never tripped but {self.describe()}"]
        t, lvl = trips[0]
        problems = []
        if self.by is not None and t > self.by:
            problems.append(f"tripped late at {t:g} s; {self.describe()}")
        if self.not_before is not None and t < self.not_before:
            problems.append(f"tripped early at {t:g} s; {self.describe()}")
        if self.level is not None and lvl != self.level:
            problems.append(f"tripped at level {lvl}; {self.describe()}")
        if self.peak_level is not None and peak != self.peak_level:
            problems.append(f"reached level {peak}; {self.describe()}")
        return problems


@dataclass
class Trace:
    name: str
    start: float
    samples: list[Sample]
    description: str = ""
    plan: str | None = None
    expect: Expectation | None = None
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.samples[-1].at if self.samples else self.start

    def services(self) -> set[str]:
        return {s.service for s in self.samples}

    def plan_path(self) -> Path | None:
        if self.plan is None:
            return None
        base = self.source.parent if self.source is not None else Path.cwd()
        return base / self.plan


def _bool(value: Any, name: str = "ok") -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _opt_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _sample(row: Mapping[str, Any], start: float) -> Sample:
    service = row.get("service")
    if not service:
        raise ValueError("sample needs a service")
    if row.get("at") not in (None, ""):
        at = float(row["at"])
    elif row.get("t") not in (None, ""):
        at = start + float(row["t"])
    else:
        raise ValueError("sample needs t (seconds after start) or at (epoch seconds)")
    return Sample(str(service), _bool(row.get("ok")), at, latency=_opt_float(row.get("latency")),
                  detail=str(row.get("detail") or ""), value=_opt_float(row.get("value")),
                  inconclusive=row.get("inconclusive") not in (None, "")
                  and _bool(row["inconclusive"], "inconclusive"))


def parse_jsonl(text: str, source: str = "<trace>") -> Trace:
    header: dict[str, Any] = {}
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise TraceError(f"{source}:{number}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise TraceError(f"{source}:{number}: each line must be a JSON object")
        if "trace" in obj:
            if header or rows:
                raise TraceError(f"{source}:{number}: the header must be the first line")
            header = obj
        else:
            rows.append((number, obj))
    start = float(header.get("start", 0.0))
    samples = []
    for number, row in rows:
        try:
            samples.append(_sample(row, start))
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{source}:{number}: {exc}") from None
    try:
        expect = Expectation.from_json(header["expect"]) if "expect" in header else None
    except ValueError as exc:
        raise TraceError(f"{source}:1: {exc}") from None
    known = {"trace", "start", "description", "plan", "expect"}
    samples.sort(key=lambda s: s.at)
    return Trace(name=str(header.get("trace") or Path(source).stem), start=start,
                 samples=samples, description=str(header.get("description", "")),
                 plan=header.get("plan"), expect=expect,
                 extra={k: v for k, v in header.items() if k not in known})


def parse_csv(text: str, source: str = "<trace>") -> Trace:
    reader = csv.DictReader(io.StringIO(text))
    fields = set(reader.fieldnames or [])
    if "service" not in fields or "ok" not in fields or not fields & {"t", "at"}:
        raise TraceError(f"{source}:1: CSV header needs service, ok and t or at columns")
    samples = []
    for number, row in enumerate(reader, 2):
        try:
            samples.append(_sample(row, 0.0))
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{source}:{number}: {exc}") from None
    samples.sort(key=lambda s: s.at)
    start = samples[0].at if samples and "at" in fields else 0.0
    return Trace(name=Path(source).stem, start=start, samples=samples)


def load(path: str | Path) -> Trace:
    """Read a .jsonl or .csv trace; TraceError names the line of any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    trace = parse_csv(text, str(path)) if path.suffix == ".csv" else parse_jsonl(text, str(path))
    trace.source = path
    return trace


def arrival(sample: Sample) -> float:
    """When the engine had the sample: its probe started at `at` and answered (or timed
    out) `latency` seconds later."""
    return sample.at + (sample.latency or 0.0)


def ticks(trace: Trace, every: float = 1.0, *, tail: float = 0.0
          ) -> Iterator[tuple[float, list[Sample]]]:
    """(now, samples that arrived in (previous now, now]) as a live reconcile loop sees
    them: a tick at start, start+every, ... until the last arrival + tail (empty batches
    included, so time-based rules keep moving), and one more at the arrival of each
    sample that is news (a failed one, or a service's first good one after failed ones:
    the scheduler wakes the loop for those at once). A sample arrives when its probe
    answered (`arrival`), not when it started, so a timed-out probe is not seen early."""
    if every <= 0:
        raise ValueError("every must be positive")
    samples = sorted(trace.samples, key=arrival)
    failing: set[str] = set()
    news: list[float] = []
    for s in samples:
        if not s.ok or s.service in failing:
            news.append(arrival(s))
        if s.ok:
            failing.discard(s.service)
        else:
            failing.add(s.service)
    stop = (arrival(samples[-1]) if samples else trace.start) + tail
    i, k, n = 0, 0, 0
    while True:
        grid = trace.start + k * every
        now = min(grid, news[n]) if n < len(news) else grid
        batch = []
        while i < len(samples) and arrival(samples[i]) <= now + 1e-9:
            batch.append(samples[i])
            i += 1
        yield now, batch
        while n < len(news) and news[n] <= now + 1e-9:
            n += 1
        if grid <= now + 1e-9:
            if now >= stop and i >= len(samples):
                return
            k += 1


def dumps(trace: Trace) -> str:
    header: dict[str, Any] = {"trace": trace.name, "start": trace.start}
    if trace.description:
        header["description"] = trace.description
    if trace.plan:
        header["plan"] = trace.plan
    if trace.expect is not None:
        header["expect"] = trace.expect.to_json()
    header.update(trace.extra)
    lines = [json.dumps(header)]
    lines += [json.dumps(sample_row(s, trace.start)) for s in trace.samples]
    return "\n".join(lines) + "\n"


def sample_row(sample: Sample, start: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = ({"t": round(sample.at - start, 6)} if start is not None
                           else {"at": sample.at})
    row.update(service=sample.service, ok=sample.ok)
    if sample.latency is not None:
        row["latency"] = round(sample.latency, 6)
    if sample.detail:
        row["detail"] = sample.detail
    if sample.value is not None:
        row["value"] = sample.value
    if sample.inconclusive:
        row["inconclusive"] = True
    return row


def write(trace: Trace, path: str | Path) -> None:
    Path(path).write_text(dumps(trace))


Health = Callable[[str, float], bool]
Value = Callable[[str, float], float | None]


def synthesize(*, intervals: Mapping[str, float], duration: float,
               health: Health, values: Value | None = None, start: float = 1_700_000_000.0,
               latency: float | None = None, down_detail: str = "connection refused"
               ) -> list[Sample]:
    """Samples for each service at its interval (phases spread like the scheduler's) over
    `duration` s; `health(service, t)` says up/down and `values` gives signal numbers."""
    out = []
    for index, (service, interval) in enumerate(sorted(intervals.items())):
        phase = round(((index * 0.6180339887498949) % 1.0) * min(interval, 1.0), 3)
        t = phase
        while t <= duration:
            up = health(service, t)
            value = values(service, t) if values is not None else None
            out.append(Sample(service, up, start + t, latency=latency if up else None,
                              detail="" if up else down_detail, value=value))
            t = round(t + interval, 6)
    out.sort(key=lambda s: (s.at, s.service))
    return out


class Recorder:
    """A scheduler sink that appends every sample to a JSONL trace file (absolute `at`)."""

    def __init__(self, path: str | Path, *, name: str = "recorded", description: str = ""):
        self._fh = Path(path).open("a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()
        if self._fh.tell() == 0:
            header = {"trace": name, "start": 0.0, "description": description}
            self._fh.write(json.dumps(header) + "\n")

    def __call__(self, sample: Sample) -> None:
        with self._lock:
            self._fh.write(json.dumps(sample_row(sample)) + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _iter_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from sorted(x for x in path.iterdir() if x.suffix in (".jsonl", ".csv"))
        else:
            yield path


def load_corpus(*paths: str | Path) -> list[Trace]:
    """Every trace in the given files/directories (directories: *.jsonl and *.csv)."""
    return [load(p) for p in _iter_paths(paths)]

"""Builds the labelled trace corpus in this directory: `python tests/traces/make_corpus.py`.

Every trace is synthetic and deterministic (no randomness), labelled against plan.yaml
(2 s probes, 3 failures in a row = down, availability floor 70 % over 60 s, dwell 10 s,
complaint surge +50 % over a baseline of 100, default levels). A label's times are
seconds after the trace's start; "by" allows for the floor of detection
(fault + interval x threshold + dwell) plus one tick of slack. The unit tests check the
committed files are exactly what this script writes, so edit here, then regenerate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from controller.probes.trace import Expectation, Trace, synthesize, write

HERE = Path(__file__).resolve().parent
START = 1_700_000_000.0
CORE = ("web", "api", "app")
CHANNELS = (*CORE, "hotline", "social")
INTERVALS = {**dict.fromkeys(CHANNELS, 2.0), "complaints": 10.0}
DURATION = 300.0


def down_during(services: tuple[str, ...], since: float, until: float = 1e9
                ) -> Callable[[str, float], bool]:
    return lambda svc, t: not (svc in services and since <= t < until)


def flapping(services: tuple[str, ...], since: float) -> Callable[[str, float], bool]:
    # alternate down/up on every sample (2 s): never 3 failures in a row
    return lambda svc, t: not (svc in services and t >= since and int(t // 2) % 2 == 0)


def degrading(services: tuple[str, ...], since: float, full: float
              ) -> Callable[[str, float], bool]:
    # failure share grows linearly from 0 at `since` to 100 % at `full`; a fixed
    # low-discrepancy sequence decides which samples fail, so the trace is reproducible
    def health(svc: str, t: float) -> bool:
        if svc not in services or t < since:
            return True
        share = min(1.0, (t - since) / (full - since))
        k = int(t // 2) + 7 * services.index(svc)
        return (k * 0.7548776662466927) % 1.0 >= share
    return health


def complaints(level_after: float, since: float) -> Callable[[str, float], float | None]:
    def value(svc: str, t: float) -> float | None:
        if svc != "complaints":
            return None
        wobble = (int(t // 10) % 5) * 2.0  # 96..104 around the baseline of 100
        return (level_after if t >= since else 96.0) + wobble
    return value


CORPUS: list[tuple[str, str, Callable[[str, float], bool], Callable[[str, float], float | None],
                   Expectation]] = [
    ("clean-outage", "every channel refuses connections from 60 s on",
     down_during(CHANNELS, 60), complaints(96, 1e9),
     Expectation(trip=True, not_before=60, by=80, level=1)),
    ("outage-then-recovery", "every channel down 60-150 s, then healthy again",
     down_during(CHANNELS, 60, 150), complaints(96, 1e9),
     Expectation(trip=True, not_before=60, by=80, level=1)),
    ("blip-below-threshold", "api fails two probes (4 s) at 60 s: under 3 in a row",
     down_during(("api",), 60, 64), complaints(96, 1e9),
     Expectation(trip=False)),
    ("blip-below-dwell", "all core channels down 8 s at 60 s: DOWN, but shorter than dwell",
     down_during(CORE, 60, 68), complaints(96, 1e9),
     Expectation(trip=False)),
    ("flapping-one-core", "api alternates down/up from 60 s: core availability stays 83 %",
     flapping(("api",), 60), complaints(96, 1e9),
     Expectation(trip=False)),
    ("flapping-all-core", "every core channel alternates down/up from 60 s: availability "
     "sinks to 50 % over the 60 s window though no channel is ever 3 failures down",
     flapping(CORE, 60), complaints(96, 1e9),
     Expectation(trip=True, not_before=90, by=115, level=3)),
    ("slow-degradation", "core channels fail a growing share of probes, 0 % at 60 s to "
     "100 % at 240 s",
     degrading(CORE, 60, 240), complaints(96, 1e9),
     Expectation(trip=True, not_before=100, by=256, level=3)),
    ("partial-noncore", "hotline and social down from 60 s; the core is healthy",
     down_during(("hotline", "social"), 60), complaints(96, 1e9),
     Expectation(trip=False)),
    ("partial-one-core", "api down from 60 s: core availability 67 % < 70 %; 1 of 5 down",
     down_during(("api",), 60), complaints(96, 1e9),
     Expectation(trip=True, not_before=60, by=80, level=3)),
    ("partial-three-channels", "web, api and hotline down from 60 s: 3 of 5 channels (60 %)",
     down_during(("web", "api", "hotline"), 60), complaints(96, 1e9),
     Expectation(trip=True, not_before=60, by=80, level=2)),
    ("complaint-surge", "probes healthy; complaints jump to ~180 (+80 %) at 120 s",
     down_during((), 0), complaints(180, 120),
     Expectation(trip=True, not_before=120, by=145, level=2)),
    ("complaint-bump", "probes healthy; complaints rise to ~140 (+40 %, under +50 %)",
     down_during((), 0), complaints(140, 120),
     Expectation(trip=False)),
]


def build() -> dict[str, str]:
    """File name -> JSONL text of every corpus trace."""
    from controller.probes.trace import dumps

    out = {}
    for name, description, health, values, expect in CORPUS:
        samples = synthesize(intervals=INTERVALS, duration=DURATION, health=health,
                             values=values, start=START)
        trace = Trace(name=name, start=START, samples=samples, description=description,
                      plan="plan.yaml", expect=expect)
        out[f"{name}.jsonl"] = dumps(trace)
    return out


def main() -> int:
    for file_name, text in build().items():
        (HERE / file_name).write_text(text)
    print(f"wrote {len(CORPUS)} traces to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CORPUS", "build", "write"]

"""Builds the labelled trace corpus in this directory: `python tests/traces/make_corpus.py`.

Every trace is synthetic and deterministic (no randomness), labelled against plan.yaml
(2 s probes, 3 failures in a row = down, availability floor 70 % over 60 s, dwell 10 s,
complaint surge +50 % over a baseline of 100, tickets +50 % over their rolling average
(120 s, the trace's stand-in for the plans' "daily average"), traffic down 80 % from a
baseline of 1000 (trips), satisfaction below 3.5/5 (grades only), levels from the
emergency plans' table). A label's times are seconds after the trace's start; "by" allows
for the floor of detection (fault + interval x threshold + dwell) plus one tick of slack.
Levels come from the plans' table: level 1 when every channel is down, more than 80 % of
the service is lost, traffic is down more than 80 % or satisfaction is under 3.5; level 2
at 50-80 % lost or a complaint / ticket surge; level 3 otherwise. `level` is the level at
the trip, `peakLevel` the most severe it reaches while tripped: the lost share is measured
over the window, so a partial outage's level rises as the window fills with it. The unit
tests check the committed files are exactly what this script writes, so edit here, then
regenerate.
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
NORMAL = {"complaints": 96.0, "tickets": 200.0, "traffic": 1000.0, "satisfaction": 4.4}
INTERVALS = {**dict.fromkeys(CHANNELS, 2.0), **dict.fromkeys(NORMAL, 10.0)}
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


def failing_two_of_three(services: tuple[str, ...], since: float
                         ) -> Callable[[str, float], bool]:
    # fail, fail, pass on every 3 samples (2 s each): 67 % lost, never 3 failures in a row
    return lambda svc, t: not (svc in services and t >= since and int(t // 2) % 3 != 2)


def both(*healths: Callable[[str, float], bool]) -> Callable[[str, float], bool]:
    return lambda svc, t: all(h(svc, t) for h in healths)


def signals(steps: dict[str, tuple[tuple[float, float], ...]] | None = None,
            ramp: dict[str, tuple[float, float]] | None = None
            ) -> Callable[[str, float], float | None]:
    """Each signal at its NORMAL value with a small wobble; `steps`: signal -> ((from t,
    value), ...); `ramp`: signal -> (value at the trace's end, rising linearly from t)."""
    steps, ramp = steps or {}, ramp or {}

    def value(svc: str, t: float) -> float | None:
        if svc not in NORMAL:
            return None
        step = int(t // 10) % 5
        base = NORMAL[svc]
        for since, level in steps.get(svc, ()):
            base = level if t >= since else base
        if svc in ramp:
            end, start = ramp[svc]
            base += max(0.0, t - start) / (DURATION - start) * (end - NORMAL[svc])
        if svc == "complaints":
            return base + step * 2.0  # 96..104 around the baseline of 100
        return round(base * (1 + step * 0.01), 3)  # 0..4 % above
    return value


def complaints(level_after: float, since: float) -> Callable[[str, float], float | None]:
    return signals({"complaints": ((since, level_after),)})


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
     "100 % at 240 s: level 3 at the trip, level 1 once more than 80 % is lost",
     degrading(CORE, 60, 240), complaints(96, 1e9),
     Expectation(trip=True, not_before=100, by=256, level=3, peak_level=1)),
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
    # partial outages, graded by the service they lose (the plans' "50-80 % unavailable")
    ("partial-two-of-three", "every core channel fails 2 probes of 3 from 60 s, never 3 in "
     "a row: no channel is ever down, yet 67 % of the core service is lost. It trips once "
     "the window's availability sinks under 70 % (level 3: ~40 % lost so far) and rises to "
     "level 2 as the window fills with the outage (50-80 % unavailable), not level 1",
     failing_two_of_three(CORE, 60), signals(),
     Expectation(trip=True, not_before=60, by=100, level=3, peak_level=2)),
    # falling signals: traffic down > 80 % is level 1; satisfaction < 3.5/5 grades only
    ("traffic-collapse", "probes healthy (the health checks bypass the broken path); "
     "traffic falls to ~150 of its baseline 1000 at 120 s: down 85 %, over the plans' 80 %",
     down_during((), 0), signals({"traffic": ((120, 150),)}),
     Expectation(trip=True, not_before=120, by=145, level=1, peak_level=1)),
    ("traffic-dip", "probes healthy; traffic falls 40 % at 120 s (a quiet hour, not an "
     "outage: under the 80 % drop)",
     down_during((), 0), signals({"traffic": ((120, 600),)}),
     Expectation(trip=False)),
    ("satisfaction-low", "probes healthy; satisfaction falls to ~3.2/5 at 120 s: it grades "
     "an incident (level 1) but never activates the plan on its own (trips: false)",
     down_during((), 0), signals({"satisfaction": ((120, 3.2),)}),
     Expectation(trip=False)),
    ("one-core-down-dissatisfied", "api down from 60 s (67 % core availability: trips) while "
     "satisfaction is ~3.2/5 from 30 s: level 1 (satisfaction < 3.5), not level 3",
     down_during(("api",), 60), signals({"satisfaction": ((30, 3.2),)}),
     Expectation(trip=True, not_before=60, by=80, level=1, peak_level=1)),
    # rolling baselines: tickets are compared with their own rolling average
    ("ticket-surge-rolling", "probes healthy; tickets run at ~400 (a busy season: a fixed "
     "baseline of 200 would see +100 %), then jump to ~650 at 180 s: +60 % over their "
     "rolling average, a surge (level 2)",
     down_during((), 0), signals({"tickets": ((0, 400), (180, 650))}),
     Expectation(trip=True, not_before=180, by=205, level=2, peak_level=2)),
    ("ticket-busy-day", "probes healthy; tickets run at ~400 all along: their rolling "
     "average is ~400, so nothing surges (a fixed baseline of 200 would trip)",
     down_during((), 0), signals({"tickets": ((0, 400),)}),
     Expectation(trip=False)),
    ("ticket-creep", "probes healthy; tickets climb slowly from 200 to 300 over 4 minutes: "
     "the rolling average follows, never 50 % behind",
     down_during((), 0), signals(ramp={"tickets": (300, 60)}),
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

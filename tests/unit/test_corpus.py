"""Decision correctness, measured: every labelled trace of the corpus replays as labelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.plan import load_plan
from controller.probes.trace import load_corpus
from controller.simulate import replay

TRACES = Path(__file__).resolve().parents[1] / "traces"
CORPUS = load_corpus(TRACES)


def test_corpus_has_trips_and_non_trips() -> None:
    labels = [t.expect for t in CORPUS]
    assert len(CORPUS) >= 20 and all(labels)
    assert {e.trip for e in labels if e} == {True, False}


def test_corpus_covers_partial_outages_falling_signals_and_rolling_baselines() -> None:
    """The gradings of issue 18, each with a trace that must trip and one that must not."""
    names = {t.name for t in CORPUS}
    assert {"partial-two-of-three", "traffic-collapse", "traffic-dip", "satisfaction-low",
            "one-core-down-dissatisfied", "ticket-surge-rolling", "ticket-busy-day",
            "ticket-creep"} <= names
    rising = [t for t in CORPUS if t.expect and t.expect.peak_level != t.expect.level
              and t.expect.peak_level is not None]
    assert {t.name for t in rising} >= {"partial-two-of-three", "slow-degradation"}


@pytest.mark.parametrize("trace", CORPUS, ids=[t.name for t in CORPUS])
def test_trace_replays_as_labelled(trace) -> None:  # type: ignore[no-untyped-def]
    path = trace.plan_path()
    assert path is not None
    result = replay(load_plan(path), trace)
    assert result.problems == [], result.to_json()["decisions"]

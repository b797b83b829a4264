"""Trace format and loader: JSONL with header and labels, CSV, tick replay, the recorder,
and the labelled corpus under tests/traces/ (well-formed and regenerable)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from controller.model import Sample
from controller.plan import load_plan
from controller.probes import trace as tr

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests/traces"


def test_jsonl_with_header_relative_and_absolute_times(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"trace": "x", "start": 100, "plan": "p.yaml", "expect": {"trip": true, "by": 9, '
        '"level": 2}}\n'
        '{"t": 2, "service": "api", "ok": false, "detail": "refused"}\n'
        '\n'
        '{"at": 101.5, "service": "sig", "ok": "up", "value": 180, "latency": 0.01}\n')
    t = tr.load(path)
    assert t.name == "x" and t.start == 100 and t.plan_path() == tmp_path / "p.yaml"
    assert t.expect == tr.Expectation(trip=True, by=9, level=2)
    assert [s.at for s in t.samples] == [101.5, 102.0]  # sorted by time
    assert t.samples[0] == Sample("sig", True, 101.5, latency=0.01, value=180.0)
    assert tr.parse_jsonl(tr.dumps(t)).samples == t.samples  # round trip


@pytest.mark.parametrize(("text", "error"), [
    ('{"t": 1, "ok": true}', "t.jsonl:1: sample needs a service"),
    ('{"service": "a", "ok": true}', "needs t"),
    ('{"t": 1, "service": "a", "ok": "maybe"}', "ok must be true or false"),
    ('{"t": 1, "service": "a", "ok": true, "value": "NaN"}', "not a finite number"),
    ("not json", "t.jsonl:1: not JSON"),
    ('{"t": 1, "service": "a", "ok": true}\n{"trace": "late"}', "t.jsonl:2: the header"),
    ('{"trace": "x", "expect": {"trip": false, "level": 1}}', "must-not-trip"),
])
def test_bad_traces_name_file_line_and_problem(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(text + "\n")
    with pytest.raises(tr.TraceError, match=error):
        tr.load(path)


def test_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t,service,ok,latency,detail,value\n0,api,1,0.01,,\n2,api,down,,500,\n"
                    "2,tickets,true,,,150\n")
    t = tr.load(path)
    assert [(s.at, s.service, s.ok, s.value) for s in t.samples] == [
        (0.0, "api", True, None), (2.0, "api", False, None), (2.0, "tickets", True, 150.0)]
    (tmp_path / "bad.csv").write_text("when,service\n")
    with pytest.raises(tr.TraceError, match="CSV header needs"):
        tr.load(tmp_path / "bad.csv")


def test_ticks_batch_every_sample_once_and_keep_time_moving() -> None:
    samples = [Sample("a", True, 10.0), Sample("a", False, 10.5), Sample("a", True, 13.0)]
    t = tr.Trace("x", 10.0, samples)
    batches = list(tr.ticks(t, 1.0, tail=2.0))
    # a tick every second, and one at once for the failure (news, as the scheduler says);
    # the recovery at 13 s is news too and falls on a tick
    assert [now for now, _ in batches] == [10, 10.5, 11, 12, 13, 14, 15]
    assert [len(b) for _, b in batches] == [1, 1, 0, 0, 1, 0, 0]
    assert [s for _, b in batches for s in b] == samples


def test_ticks_see_a_sample_when_its_probe_answered_as_the_live_loop_did() -> None:
    """A probe that timed out after 2 s is seen 2 s after it started, not when it started
    (which would trip a replay a timeout early); good news of a healthy service wakes
    nothing, as in the scheduler."""
    timed_out = Sample("a", False, 10.2, latency=2.0)
    quick = Sample("b", True, 10.4, latency=0.01)
    batches = list(tr.ticks(tr.Trace("x", 10.0, [timed_out, quick]), 1.0))
    assert [(now, b) for now, b in batches if b] == [(11.0, [quick]), (12.2, [timed_out])]
    assert [now for now, _ in batches] == [10, 11, 12, 12.2, 13]


def test_expectation_verdicts() -> None:
    must = tr.Expectation(trip=True, by=80, not_before=60, level=1)
    assert must.verify([(74.0, 1), (200.0, 1)]) == []
    assert "late" in must.verify([(81.0, 1)])[0]
    assert "early" in must.verify([(59.0, 1)])[0]
    assert "level 2" in must.verify([(70.0, 2)])[0]
    assert "never tripped" in must.verify([])[0]
    never = tr.Expectation(trip=False)
    assert never.verify([]) == [] and "tripped at 5" in never.verify([(5.0, 3)])[0]


def test_a_label_can_name_the_level_a_trip_rises_to() -> None:
    rising = tr.Expectation.from_json({"trip": True, "level": 3, "peakLevel": 2})
    assert rising.verify([(90.0, 3)], 2) == []
    assert rising.verify([(90.0, 3)], 3) == [
        "reached level 3; must trip at level 3 reaching level 2"]
    assert rising.to_json() == {"trip": True, "level": 3, "peakLevel": 2}
    with pytest.raises(ValueError, match="cannot name `by`, `level` or `peakLevel`"):
        tr.Expectation.from_json({"trip": False, "peakLevel": 1})


def test_recorder_appends_a_loadable_trace(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    rec = tr.Recorder(path, name="live")
    rec(Sample("api", True, 1700000000.5, latency=0.02, detail="GET /: 200"))
    rec(Sample("api", False, 1700000001.5, detail="timed out after 1 s"))
    rec.close()
    t = tr.load(path)
    assert t.name == "live" and [s.ok for s in t.samples] == [True, False]
    assert t.samples[1].at == 1700000001.5


def _corpus_builder() -> object:
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_labelled_consistent_and_regenerable() -> None:
    traces = tr.load_corpus(CORPUS)
    assert len(traces) >= 10
    plan = load_plan(CORPUS / "plan.yaml")
    names = {s.name for s in plan.spec.services} | {s.name for s in plan.spec.signals}
    for t in traces:
        assert t.expect is not None, t.name
        assert t.plan_path() == CORPUS / "plan.yaml"
        assert t.services() == names, t.name
    labels = [t.expect for t in traces if t.expect is not None]
    assert any(e.trip for e in labels) and any(not e.trip for e in labels)
    built = _corpus_builder().build()  # type: ignore[attr-defined]
    on_disk = {p.name: p.read_text() for p in CORPUS.glob("*.jsonl")}
    assert built == on_disk, "corpus is stale: python tests/traces/make_corpus.py"

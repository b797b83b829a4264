"""Reports: JUnit failures for missed targets, the timeline chart, Markdown."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

from controller.chart import timeline_svg
from controller.report import to_junit, to_markdown


def step(name: str, done: float, target: float | None, met: bool | None,
         status: str = "succeeded", error: str | None = None) -> dict[str, Any]:
    return {"name": name, "index": 0, "action": "traffic", "status": status,
            "targetSeconds": target, "startedAt": 0, "finishedAt": done,
            "elapsedSeconds": 0.5, "sinceDetectionSeconds": done, "met": met,
            "attempts": 1, "evidence": {}, "error": error, "approvedBy": None}


REPORT = {
    "run": {"id": "r1", "plan": "p", "kind": "failover", "phase": "FailedOver", "level": 1,
            "reason": "tripped", "requestedBy": "controller", "detectedAt": 100.0,
            "startedAt": 103.0, "finishedAt": 110.0, "approved": True, "outcome": "done"},
    "steps": [step("redirect", 4.0, 3600, True), step("dns", 9000.0, 7200, False),
              step("verify", 9001.0, None, None, "failed", "probe failed")],
    "summary": {"steps": 3, "succeeded": 2, "failed": 1, "targetsMet": 1, "targetsMissed": 1,
                "totalSeconds": 7.0},
    "decisions": [{"action": "trip", "sentence": "tripped: api down"}],
    "audit": [],
}


def test_junit_marks_missed_targets_and_failures() -> None:
    suite = ET.fromstring(to_junit(REPORT))
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["redirect"].find("failure") is None
    assert "target missed" in (cases["dns"].find("failure").get("message") or "")  # type: ignore[union-attr]
    assert cases["verify"].find("failure").get("message") == "probe failed"  # type: ignore[union-attr]


def test_chart_has_a_bar_and_a_target_per_step_coloured_by_outcome() -> None:
    svg = ET.fromstring(timeline_svg(REPORT))
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == 3
    assert [b.get("fill") for b in bars] == ["#2e7d32", "#c62828", "#607d8b"]
    targets = [line for line in svg.iter(f"{ns}line") if line.get("stroke-width") == "3"]
    assert len(targets) == 2
    assert "trip 3.00 s" in timeline_svg(REPORT)


def test_markdown_has_the_table_chart_and_decisions() -> None:
    md = to_markdown(REPORT, chart="failover.svg")
    assert "![timeline" in md and "| 1 | redirect | traffic | succeeded |" in md
    assert "**no**" in md and "- trip: tripped: api down" in md

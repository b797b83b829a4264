"""Run reports from the journal: JSON, JUnit XML (for CI) and Markdown.

Every step appears with its start, end, elapsed time, time since detection and its
target, and whether the target was met — the evaluation the emergency plans ask for
after every incident and drill.
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from controller.journal import Journal


class UnknownRun(LookupError):
    pass


def build(journal: Journal, run_id: str) -> dict[str, Any]:
    run = journal.run(run_id)
    if run is None:
        known = ", ".join(r.id for r in journal.runs(limit=5)) or "none"
        raise UnknownRun(f"no run {run_id!r} in {journal.path} (latest: {known})")
    steps = [s.to_json() for s in journal.steps(run_id)]
    decisions = [d for d in journal.decisions(run.plan, limit=200)
                 if d["at"] <= (run.finished_at or float("inf"))]
    return {
        "run": run.to_json(),
        "steps": steps,
        "summary": summarize(run.to_json(), steps),
        "decisions": decisions[-20:],
        "audit": journal.audit_trail(run_id=run_id),
    }


def summarize(run: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and total time of a run (`Run.to_json`) and its steps, from any source."""
    finished, started = run.get("finishedAt"), run.get("startedAt")
    return {
        "steps": len(steps),
        "succeeded": sum(s["status"] == "succeeded" for s in steps),
        "failed": sum(s["status"] == "failed" for s in steps),
        "targetsMet": sum(s.get("met") is True for s in steps),
        "targetsMissed": sum(s.get("met") is False for s in steps),
        "totalSeconds": (finished - started) if finished and started is not None else None,
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True, default=str)


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def to_junit(report: dict[str, Any]) -> str:
    run = report["run"]
    suite = ET.Element("testsuite", name=f"{run['plan']}:{run['kind']}",
                       tests=str(len(report["steps"])),
                       failures=str(sum(s["met"] is False for s in report["steps"])),
                       time=f"{report['summary']['totalSeconds'] or 0:.3f}")
    for s in report["steps"]:
        case = ET.SubElement(suite, "testcase", classname=f"{run['plan']}.{run['kind']}",
                             name=s["name"], time=f"{s['elapsedSeconds'] or 0:.3f}")
        if s["status"] in ("failed", "unknown"):
            ET.SubElement(case, "failure", message=s["error"] or s["status"])
        elif s["met"] is False:
            ET.SubElement(case, "failure", message=(
                f"target missed: done {_fmt(s['sinceDetectionSeconds'])} after detection, "
                f"target {_fmt(s['targetSeconds'])}"))
        elif s["status"] not in ("succeeded", "reverted"):
            ET.SubElement(case, "skipped", message=f"step {s['status']}")
    return ET.tostring(suite, encoding="unicode")


def to_markdown(report: dict[str, Any], *, chart: str | None = None) -> str:
    run, summary = report["run"], report["summary"]
    lines = [
        f"# {run['kind'].capitalize()} report: {run['plan']}",
        "",
        *([f"![timeline of the steps against their targets]({chart})", ""] if chart else []),
        f"- Run: `{run['id']}` — phase **{run['phase']}**, level {run['level'] or '-'}",
        f"- Started: {run.get('cause') or run['reason']}",
        f"- Outcome: {run['outcome'] or 'in progress'}",
        f"- Targets met: {summary['targetsMet']}, missed: {summary['targetsMissed']}",
        "",
        "| # | step | action | status | elapsed | since detection | target | met |",
        "|---|------|--------|--------|---------|-----------------|--------|-----|",
    ]
    for s in report["steps"]:
        met = {True: "yes", False: "**no**", None: "-"}[s["met"]]
        lines.append(
            f"| {s['index'] + 1} | {s['name']} | {s['action']} | {s['status']} | "
            f"{_fmt(s['elapsedSeconds'])} | {_fmt(s['sinceDetectionSeconds'])} | "
            f"{_fmt(s['targetSeconds'])} | {met} |")
    errors = [s for s in report["steps"] if s["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {s['name']}: {s['error']}" for s in errors]
    if report["decisions"]:
        lines += ["", "## Decisions", ""] + [
            f"- {d['action']}: {d['sentence']}" for d in report["decisions"]]
    return "\n".join(lines) + "\n"

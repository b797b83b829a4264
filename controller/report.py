"""Run reports from the journal: JSON, JUnit XML (for CI) and Markdown.

Every step appears with its start, end, elapsed time, time since detection and its
target, and whether the target was met — the evaluation the emergency plans ask for
after every incident and drill. A step that follows its level's targets (`levelTarget`)
also shows the level's target beside its own: the last level targets the run was held to,
as audited when it started and at each rise (`controller.targets`).
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from controller import targets
from controller.journal import Journal


class UnknownRun(LookupError):
    pass


def build(journal: Journal, run_id: str) -> dict[str, Any]:
    run = journal.run(run_id)
    if run is None:
        known = ", ".join(r.id for r in journal.runs(limit=5)) or "none"
        raise UnknownRun(f"no run {run_id!r} in {journal.path} (latest: {known})")
    audit = journal.audit_trail(run_id=run_id)
    held = [p for a in audit if a["action"] == targets.ACTION
            and (p := targets.parse(str(a["detail"]))) is not None]
    follows = {d["name"]: d.get("levelTarget") for d in run.steps}
    steps = []
    for rec in journal.steps(run_id):
        step = rec.to_json()
        kind = follows.get(rec.name)
        if held and kind is not None:
            _, respond, fix = held[-1]
            step["levelTargetSeconds"] = respond if kind == "respond" else fix
        steps.append(step)
    decisions = [d for d in journal.decisions(run.plan, limit=200)
                 if d["at"] <= (run.finished_at or float("inf"))]
    return {
        "run": run.to_json(),
        "steps": steps,
        "summary": summarize(run.to_json(), steps),
        "levelTargets": ({"level": held[-1][0], "respondSeconds": held[-1][1],
                          "fixSeconds": held[-1][2]} if held else None),
        "decisions": decisions[-20:],
        "audit": audit,
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
                f"target {_fmt(s['targetSeconds'])}{_level(s)}"))
        elif s["status"] not in ("succeeded", "reverted"):
            ET.SubElement(case, "skipped", message=f"step {s['status']}")
    return ET.tostring(suite, encoding="unicode")


def _level(step: dict[str, Any]) -> str:
    """', level target 30 min' for a step held to its level's target too."""
    level = step.get("levelTargetSeconds")
    return "" if level is None else f", level target {_fmt(level)}"


def to_markdown(report: dict[str, Any], *, chart: str | None = None) -> str:
    run, summary = report["run"], report["summary"]
    held = report.get("levelTargets")
    lines = [
        f"# {run['kind'].capitalize()} report: {run['plan']}",
        "",
        *([f"![timeline of the steps against their targets]({chart})", ""] if chart else []),
        f"- Run: `{run['id']}` — phase **{run['phase']}**, level {run['level'] or '-'}",
        f"- Started: {run.get('cause') or run['reason']}",
        f"- Outcome: {run['outcome'] or 'in progress'}",
        f"- Targets met: {summary['targetsMet']}, missed: {summary['targetsMissed']}",
        *([f"- Level {held['level']} targets: respond {_fmt(held['respondSeconds'])}, "
           f"fix {_fmt(held['fixSeconds'])}"] if held else []),
        "",
        "| # | step | action | status | elapsed | since detection | target | level target "
        "| met |",
        "|---|------|--------|--------|---------|-----------------|--------|--------------"
        "|-----|",
    ]
    for s in report["steps"]:
        met = {True: "yes", False: "**no**", None: "-"}[s["met"]]
        lines.append(
            f"| {s['index'] + 1} | {s['name']} | {s['action']} | {s['status']} | "
            f"{_fmt(s['elapsedSeconds'])} | {_fmt(s['sinceDetectionSeconds'])} | "
            f"{_fmt(s['targetSeconds'])} | {_fmt(s.get('levelTargetSeconds'))} | {met} |")
    errors = [s for s in report["steps"] if s["error"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {s['name']}: {s['error']}" for s in errors]
    if report["decisions"]:
        lines += ["", "## Decisions", ""] + [
            f"- {d['action']}: {d['sentence']}" for d in report["decisions"]]
    return "\n".join(lines) + "\n"

"""The drill's reports: what a person reads after a drill, and what CI parses.

Owns the files a drill writes into its output directory, all from the verdict (itself
built from the journal, whose text is already scrubbed of secrets):

- per run (`failover.*`, `failback.*`): the run report as JSON, JUnit XML, Markdown and
  the SVG timeline (`controller.report`, `controller.chart`);
- `verdict.json`: the whole drill, machine-readable; its shape is documented by
  `manifests/drills/verdict.schema.json` (a test validates real output against it);
- `drill.junit.xml`: one test suite per run (a test case per step, failed when the step
  failed or missed its target) and one for the checks (a test case per check), so CI
  systems show the drill natively;
- `report.md` and `report.html`: the same content — verdict, RTO and RPO achieved
  against the plan, detection and trip, every step against its target with the timeline
  chart, the checks, each step's key evidence (which backup and why, every DNS server's
  answer, the traffic split observed), the decision sentences and what ran where. The
  HTML inlines the SVG charts, so it is one self-contained file;
- `drill.prom`: the outcome as Prometheus metrics (`controller.metrics.DRILLS`) for a
  Pushgateway or a textfile collector, which the `NoPassingDrill` alert reads.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from prometheus_client import write_to_textfile

from controller import metrics
from controller import report as reports
from controller.chart import timeline_svg
from controller.plan_records import RecordsSpec
from controller.records.archive import record_drill
from controller.registry import find_step_kind
from controller.steps import seconds


def _clock(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d} UTC" \
        if at else "-"


def write_reports(out: Path, verdict: dict[str, Any], *,
                  records: RecordsSpec | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record_drill(records, verdict)  # kept for `records.keep`; readiness counts passed drills
    for name in ("failover", "failback"):
        rep = verdict.get(name)
        if rep is None:
            continue
        (out / f"{name}.json").write_text(reports.to_json(rep))
        (out / f"{name}.junit.xml").write_text(reports.to_junit(rep))
        (out / f"{name}.svg").write_text(timeline_svg(rep))
        (out / f"{name}.md").write_text(reports.to_markdown(rep, chart=f"{name}.svg"))
    (out / "verdict.json").write_text(reports.to_json(verdict))
    (out / "drill.junit.xml").write_text(to_junit(verdict))
    text = to_markdown(verdict)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(to_html(text, out, title=_title(verdict)))
    metrics.drill_ended(verdict["plan"], (verdict.get("scenario") or {}).get("name", ""),
                        passed=verdict["passed"], at=time.time())
    write_to_textfile(str(out / "drill.prom"), metrics.DRILLS)


# --- JUnit ---------------------------------------------------------------------------------


def to_junit(verdict: dict[str, Any]) -> str:
    root = ET.Element("testsuites", name=f"drill {_name(verdict)}")
    for name in ("failover", "failback"):
        if verdict.get(name):
            root.append(ET.fromstring(reports.to_junit(verdict[name])))
    checks = verdict["checks"]
    suite = ET.SubElement(root, "testsuite", name=f"{_name(verdict)}:checks",
                          tests=str(len(checks)),
                          failures=str(sum(not c["ok"] for c in checks)))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"{_name(verdict)}.{c['stage']}",
                             name=c["check"])
        if not c["ok"]:
            ET.SubElement(case, "failure", message=c["detail"][:500])
        else:
            ET.SubElement(case, "system-out").text = c["detail"]
    root.set("tests", str(sum(int(s.get("tests", "0")) for s in root)))
    root.set("failures", str(sum(int(s.get("failures", "0")) for s in root)))
    return ET.tostring(root, encoding="unicode")


# --- Markdown ------------------------------------------------------------------------------


def _name(verdict: dict[str, Any]) -> str:
    scenario = verdict.get("scenario")
    return str(scenario["name"]) if scenario else str(verdict["plan"])


def _title(verdict: dict[str, Any]) -> str:
    return f"Drill report: {_name(verdict)} — {'PASSED' if verdict['passed'] else 'FAILED'}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _objective(label: str, obj: dict[str, Any] | None, what: str) -> str:
    if not obj:
        return f"- **{label}**: not measured ({what})"
    target = obj["targetSeconds"]
    met = {True: "met", False: "**MISSED**", None: "no target"}[obj["met"]]
    plan = f"plan {seconds(target)} ({obj['source']})" if target is not None else "no plan target"
    return f"- **{label}**: {seconds(obj['achievedSeconds'])} achieved ({what}) — {plan} — {met}"


def _steps_table(rep: dict[str, Any]) -> list[str]:
    lines = ["| # | step | action | status | elapsed | since detection | target | met |",
             "|---|------|--------|--------|---------|-----------------|--------|-----|"]
    for s in rep["steps"]:
        met = {True: "yes", False: "**no**", None: "-"}[s["met"]]
        lines.append(f"| {s['index'] + 1} | {s['name']} | {s['action']} | {s['status']} | "
                     f"{seconds(s['elapsedSeconds'])} | {seconds(s['sinceDetectionSeconds'])} | "
                     f"{seconds(s['targetSeconds'])} | {met} |")
    return lines


def evidence_lines(step: dict[str, Any]) -> list[str]:
    """The facts of one step a reviewer looks for, from its evidence (its kind says which)."""
    out = [f"error: {step['error']}"] if step["error"] else []
    kind = find_step_kind(step["action"])
    return out + (kind.facts(step["evidence"] or {}) if kind is not None else [])


def _run_section(title: str, rep: dict[str, Any], chart: str) -> list[str]:
    run = rep["run"]
    lines = ["", f"## {title}", "", f"![{title} timeline: each step against its target]"
             f"({chart})", "",
             f"- Run `{run['id']}`: phase **{run['phase']}**, level {run['level'] or '-'}, "
             f"requested by {run['requestedBy']}",
             f"- Reason: {run['reason']}", f"- Outcome: {run['outcome'] or 'in progress'}", ""]
    lines += _steps_table(rep)
    detail = [(s, evidence_lines(s)) for s in rep["steps"]]
    if any(facts for _, facts in detail):
        lines += ["", f"### {title}: evidence", ""]
        for s, facts in detail:
            if facts:
                lines.append(f"- **{s['name']}**")
                lines += [f"  - {_cell(f)}" for f in facts]
    return lines


def to_markdown(verdict: dict[str, Any]) -> str:
    checks, timeline = verdict["checks"], verdict.get("timeline", {})
    scenario = verdict.get("scenario") or {}
    passed = sum(c["ok"] for c in checks)
    lines = [f"# {_title(verdict)}", ""]
    if scenario.get("description"):
        lines += [scenario["description"].strip(), ""]
    lines += [f"- Verdict: **{'PASSED' if verdict['passed'] else 'FAILED'}** — {passed} of "
              f"{len(checks)} checks passed"]
    failed = [c for c in checks if not c["ok"]]
    lines += [f"- Failed: **{c['check']}** — {_cell(c['detail'])}" for c in failed]
    lines.append(f"- Plan: `{verdict['plan']}`" + (f" (template `{scenario['plan']}`, "
                 f"scenario file `{scenario['file']}`)" if scenario else ""))
    lines += [f"- Fault: {f}" for f in verdict.get("faults", [])]
    obj = verdict.get("objectives") or {}
    lines.append(_objective("RTO", obj.get("rto"), "detection to the last failover step"
                            if obj.get("rto") else "the failover did not end FailedOver"))
    rpo = obj.get("rpo")
    lines.append(_objective("RPO", rpo, "no database was restored or promoted" if not rpo
                            else "age of the restored data" if rpo.get("backup")
                            else "replication lag of the promoted standby"))
    if "injectedAt" in timeline and "detectedAt" in timeline:
        inj, det, trip = timeline["injectedAt"], timeline["detectedAt"], timeline["trippedAt"]
        lines.append(f"- Detection: fault injected at {_clock(inj)}, detected "
                     f"{seconds(det - inj)} later, tripped {seconds(trip - det)} after detection")
    if verdict.get("failover"):
        lines += _run_section("Failover", verdict["failover"], "failover.svg")
    lines += ["", "## Checks", "", "| stage | check | result | detail |",
              "|-------|-------|--------|--------|"]
    lines += [f"| {c['stage']} | {_cell(c['check'])} | {'pass' if c['ok'] else '**FAIL**'} | "
              f"{_cell(c['detail'])} |" for c in checks]
    if verdict.get("failback"):
        lines += _run_section("Failback", verdict["failback"], "failback.svg")
    decisions = (verdict.get("failover") or {}).get("decisions") or []
    if decisions:
        lines += ["", "## Decisions", ""]
        lines += [f"- {_clock(d['at'])} {d['action']}: {_cell(d['sentence'])}"
                  for d in decisions[-12:]]
    sandbox = verdict.get("sandbox")
    if sandbox:
        lines += ["", "## Sandbox: what ran where", "", "| site | service | pid | detail |",
                  "|------|---------|-----|--------|"]
        lines += [f"| {r['site']} | {r['service']} | {r['pid'] or 'in-process'} | "
                  f"{_cell(r['detail'])} |" for r in sandbox["services"]]
        down = sandbox.get("teardown") or {}
        if down:
            state = "nothing left running or listening" if down.get("clean") else \
                f"NOT clean: {_cell(down)}"
            lines += ["", f"Teardown in {seconds(down.get('seconds'))}: "
                      f"{len(down.get('stoppedPids', []))} processes stopped by PID, "
                      f"{len(down.get('orphansStopped', []))} leftovers swept, {state}."]
            if down.get("leftAlone"):
                lines.append(f"Left running (not started by the sandbox, only naming its "
                             f"directory): {_cell(down['leftAlone'])}.")
    return "\n".join(lines) + "\n"


# --- HTML ----------------------------------------------------------------------------------

_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}code{background:#f4f4f4;
padding:0 3px}svg{max-width:100%;height:auto}li>ul{margin:0}"""
_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>")]
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    text = html.escape(text, quote=False).replace("\\|", "|")
    for pattern, repl in _INLINE:
        text = pattern.sub(repl, text)
    return text


def to_html(markdown: str, folder: Path, *, title: str) -> str:
    """The Markdown report as one HTML page; `![..](x.svg)` becomes the SVG itself."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            body.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif image := _IMAGE.match(line.strip()):
            svg = folder / image.group(2)
            body.append(f"<figure>{svg.read_text()}<figcaption>{_inline(image.group(1))}"
                        "</figcaption></figure>" if svg.exists() else "")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", lines[i])[1:-1]])
                i += 1
            head, rest = rows[0], [r for r in rows[2:]]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>"
                                                            for c in r) + "</tr>" for r in rest)
                        + "</table>")
            continue
        elif line.startswith("- "):
            items: list[str] = []
            while i < len(lines) and (lines[i].startswith("- ") or lines[i].startswith("  - ")):
                if lines[i].startswith("  - "):
                    items.append(f"<ul><li>{_inline(lines[i][4:])}</li></ul>")
                else:
                    items.append(f"<li>{_inline(lines[i][2:])}")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        else:
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")

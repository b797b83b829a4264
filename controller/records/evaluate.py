"""The post-incident evaluation the emergency plans ask for, across archived failover runs:
"response speed" and "recovery efficiency", measured against the plans' own targets.

Pure computation over the archived run documents (`controller.records.archive`: a run's
report with `kind: run`), time injected, so every figure is checked by hand on made-up
runs. For the failover runs detected in the window (`since` before `now`):

- response speed: detection -> acknowledgement (the first action a person took on the
  run: a request, an approval, a human step done) and detection -> first action (the
  first step started);
- recovery efficiency: the share of steps with a time target that met it, overall, per
  step and per response level;
- MTTR per level: the mean time from detection to the run's successful end, against the
  plans' targets (`MTTR_TARGETS`: mean time to repair at most 2 h; a major fault,
  level 1, at most 4 h); a run that failed was not repaired and is counted apart;
- RTO / RPO: the distribution of the recovery time (detection to the end of a repaired
  run) and of the data lost (the largest `rpoSeconds` of the run's promote/restore
  steps).

`evaluate` returns the figures as JSON; `to_markdown` renders tables and a text chart
that reads anywhere (a terminal, an e-mail, GitHub).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller.notices import span

MTTR_TARGET, MAJOR_TARGET = 2 * 3600.0, 4 * 3600.0  # the plans: MTTR <= 2 h; major <= 4 h
MTTR_TARGETS = {1: MAJOR_TARGET}  # a level not named here: MTTR_TARGET
REPAIRED = "FailedOver"
BAR = 40  # characters of the longest bar in the text chart


def target_for(level: int | None) -> float:
    return MTTR_TARGETS.get(level or 0, MTTR_TARGET)


def failovers(docs: Iterable[Mapping[str, Any]], *, plan: str | None, since: float,
              now: float) -> list[Mapping[str, Any]]:
    """The archived, finished failover runs of `plan` (all plans: None) detected within
    `since` seconds before `now`, oldest first."""
    out = [d for d in docs if d.get("kind") == "run" and d["run"]["kind"] == "failover"
           and d["run"].get("finishedAt") is not None
           and (plan is None or d["run"]["plan"] == plan)
           and now - since <= d["run"]["detectedAt"] <= now]
    return sorted(out, key=lambda d: d["run"]["detectedAt"])


def acknowledged(doc: Mapping[str, Any]) -> float | None:
    """When a person first acted on the run (seconds after detection), or None."""
    run = doc["run"]
    times = [a["at"] for a in doc.get("audit", []) if a.get("actor") != "controller"]
    if run.get("requestedBy") not in (None, "", "controller"):
        times.append(run["detectedAt"])  # a person asked for it: detected by a person
    return max(0.0, min(times) - run["detectedAt"]) if times else None


def first_action(doc: Mapping[str, Any]) -> float | None:
    """When the first step started (seconds after detection), or None."""
    starts = [s["startedAt"] for s in doc["steps"] if s.get("startedAt") is not None]
    return max(0.0, min(starts) - doc["run"]["detectedAt"]) if starts else None


def recovery(doc: Mapping[str, Any]) -> float | None:
    """Detection to the end of a repaired run (seconds); None if it was not repaired."""
    run = doc["run"]
    return run["finishedAt"] - run["detectedAt"] if run["phase"] == REPAIRED else None


def data_lost(doc: Mapping[str, Any]) -> float | None:
    """The run's RPO: the largest `rpoSeconds` its steps' evidence reports, or None."""
    found = [float(s["evidence"]["rpoSeconds"]) for s in doc["steps"]
             if isinstance(s.get("evidence"), Mapping)
             and isinstance(s["evidence"].get("rpoSeconds"), int | float)]
    return max(found) if found else None


def distribution(values: Sequence[float]) -> dict[str, Any]:
    """count, min, median, p90 (nearest rank), max and mean of `values` (None if none)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "min": None, "p50": None, "p90": None, "max": None, "mean": None}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return {"count": len(ordered), "min": ordered[0], "p50": rank(0.5), "p90": rank(0.9),
            "max": ordered[-1], "mean": sum(ordered) / len(ordered)}


def share(met: int, total: int) -> dict[str, Any]:
    return {"met": met, "total": total,
            "percent": round(100.0 * met / total, 1) if total else None}


def evaluate(docs: Iterable[Mapping[str, Any]], *, plan: str | None, since: float,
             now: float) -> dict[str, Any]:
    """The evaluation of the failover runs in the window (see the module doc)."""
    runs = failovers(docs, plan=plan, since=since, now=now)
    acks = [(d, acknowledged(d)) for d in runs]
    firsts = [(d, first_action(d)) for d in runs]
    steps: dict[str, list[bool]] = {}
    levels: dict[str, list[bool]] = {}
    for d in runs:
        for s in d["steps"]:
            if s.get("met") is not None:
                steps.setdefault(s["name"], []).append(bool(s["met"]))
                levels.setdefault(_level(d), []).append(bool(s["met"]))
    judged = [m for ms in steps.values() for m in ms]
    mttr = []
    for key in sorted({_level(d) for d in runs}):
        of = [d for d in runs if _level(d) == key]
        times = [t for t in map(recovery, of) if t is not None]
        target = target_for(None if key == "-" else int(key))
        mean = sum(times) / len(times) if times else None
        mttr.append({"level": key, "runs": len(of), "repaired": len(times),
                     "failed": len(of) - len(times), "meanSeconds": mean,
                     "targetSeconds": target,
                     "met": None if mean is None else mean <= target,
                     "withinTarget": share(sum(t <= target for t in times), len(times))})
    return {
        "plan": plan, "from": now - since, "to": now, "runs": len(runs),
        "runIds": [d["run"]["id"] for d in runs],
        "responseSpeed": {
            "acknowledgementSeconds": distribution([t for _, t in acks if t is not None]),
            "unacknowledged": [d["run"]["id"] for d, t in acks if t is None],
            "firstActionSeconds": distribution([t for _, t in firsts if t is not None]),
        },
        "recoveryEfficiency": {
            "targets": share(sum(judged), len(judged)),
            "perStep": {name: share(sum(ms), len(ms)) for name, ms in sorted(steps.items())},
            "perLevel": {key: share(sum(ms), len(ms)) for key, ms in sorted(levels.items())},
        },
        "mttr": mttr,
        "rto": distribution([t for t in map(recovery, runs) if t is not None]),
        "rpo": distribution([t for t in map(data_lost, runs) if t is not None]),
    }


def _level(doc: Mapping[str, Any]) -> str:
    level = doc["run"].get("level")
    return "-" if level is None else str(level)


# --- for people ---------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else span(seconds)


def _pct(s: Mapping[str, Any]) -> str:
    return "-" if s["percent"] is None else f"{s['percent']:g} % ({s['met']}/{s['total']})"


def chart(rows: Sequence[tuple[str, float | None, float]]) -> list[str]:
    """A text bar chart: one bar per (label, value, target) on one scale, the target
    marked '|', the bar drawn '#' up to its target and '!' past it."""
    top = max([v for _, v, _ in rows if v is not None] + [t for *_, t in rows], default=0)
    if top <= 0:
        return []
    out = []
    for label, value, target in rows:
        mark = round(BAR * target / top)
        size = 0 if value is None else max(1, round(BAR * value / top))
        bar = ["#" if i < mark else "!" for i in range(size)] + [" "] * (BAR + 1 - size)
        bar[min(mark, BAR)] = "|"
        out.append(f"{label:>8} {''.join(bar)} {_s(value)} (target {_s(target)})")
    return out


def to_markdown(ev: Mapping[str, Any]) -> str:
    speed, eff = ev["responseSpeed"], ev["recoveryEfficiency"]
    ack, first = speed["acknowledgementSeconds"], speed["firstActionSeconds"]
    lines = [
        f"# Evaluation of failovers: {ev['plan'] or 'all plans'}",
        "",
        f"{ev['runs']} failover run(s) detected from {_day(ev['from'])} to {_day(ev['to'])}.",
        "",
        "## Response speed (from detection)",
        "",
        "| measure | runs | median | p90 | worst |",
        "|---------|------|--------|-----|-------|",
        f"| acknowledgement | {ack['count']} | {_s(ack['p50'])} | {_s(ack['p90'])} | "
        f"{_s(ack['max'])} |",
        f"| first action | {first['count']} | {_s(first['p50'])} | {_s(first['p90'])} | "
        f"{_s(first['max'])} |",
        *([f"\nNot acknowledged by a person: {', '.join(speed['unacknowledged'])}"]
          if speed["unacknowledged"] else []),
        "",
        "## Recovery efficiency (step targets met)",
        "",
        f"Overall: {_pct(eff['targets'])}",
        "",
        "| step | targets met |",
        "|------|-------------|",
        *[f"| {name} | {_pct(s)} |" for name, s in eff["perStep"].items()],
        "",
        "| level | targets met |",
        "|-------|-------------|",
        *[f"| {key} | {_pct(s)} |" for key, s in eff["perLevel"].items()],
        "",
        "## Mean time to repair, per level",
        "",
        "| level | runs | repaired | failed | MTTR | target | met | within target |",
        "|-------|------|----------|--------|------|--------|-----|---------------|",
    ]
    for m in ev["mttr"]:
        met = {True: "yes", False: "**no**", None: "-"}[m["met"]]
        lines.append(f"| {m['level']} | {m['runs']} | {m['repaired']} | {m['failed']} | "
                     f"{_s(m['meanSeconds'])} | {_s(m['targetSeconds'])} | {met} | "
                     f"{_pct(m['withinTarget'])} |")
    bars = chart([(f"level {m['level']}", m["meanSeconds"], m["targetSeconds"])
                  for m in ev["mttr"]])
    if bars:
        lines += ["", "```text", "MTTR per level ('|' = target, '!' = past it)", *bars,
                  "```"]
    lines += ["", "## RTO and RPO", "",
              "| measure | runs | min | median | p90 | max |",
              "|---------|------|-----|--------|-----|-----|"]
    for name, d in (("RTO (detection to recovery)", ev["rto"]), ("RPO (data lost)", ev["rpo"])):
        lines.append(f"| {name} | {d['count']} | {_s(d['min'])} | {_s(d['p50'])} | "
                     f"{_s(d['p90'])} | {_s(d['max'])} |")
    return "\n".join(lines) + "\n"


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))

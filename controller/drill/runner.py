"""The drill scenario: inject a fault, let the loop fail over, verify, fail back, report.

A drill is a real run of the engine — the same policy, executor and journal as an
incident — with the fault injected on purpose. Its verdict is machine-readable: passed
only if the plan failed over, every step met its time target, and failback restored the
primary. Reports (JSON, JUnit XML, Markdown) are written for CI to keep.

Fault injection here drives the in-memory world of `controller.testing` (probe keys are
site names); the sandbox of real services plugs its own injector in through `Fault`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from controller import report as reports
from controller.chart import timeline_svg
from controller.journal import Journal
from controller.loop import Engine, observe
from controller.model import Phase
from controller.plan import FailoverPlan
from controller.probes.scheduler import ProbeScheduler

Echo = Callable[[str], None] | None


class Fault(Protocol):
    def inject(self) -> str: ...
    def clear(self) -> str: ...


class MemorySiteFault:
    """Takes the primary site down in the in-memory world of controller.testing."""

    def __init__(self, plan: FailoverPlan):
        self.site = plan.spec.sites.primary.name
        self.state_files = sorted({
            p.options.get("stateFile") for s in plan.spec.services for p in s.probes
            if p.kind == "memory"
        }, key=str)

    def _set(self, up: bool) -> None:
        from controller.testing import set_health

        for state_file in self.state_files:
            set_health(self.site, up, state_file=state_file)

    def inject(self) -> str:
        self._set(False)
        return f"site {self.site} down (in-memory fault)"

    def clear(self) -> str:
        self._set(True)
        return f"site {self.site} repaired"


def _drive(engine: Engine, until: tuple[Phase, ...], *, timeout: float, interval: float,
           echo: Echo) -> Phase:
    with observe(engine.plan, engine.backends) as scheduler:
        return _ticks(engine, scheduler, until, timeout=timeout, interval=interval, echo=echo)


def _ticks(engine: Engine, scheduler: ProbeScheduler, until: tuple[Phase, ...], *,
           timeout: float, interval: float, echo: Echo) -> Phase:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        time.sleep(interval)
        state = engine.tick(scheduler.drain())
        if echo and state.last_decision and state.last_decision != last:
            last = state.last_decision
            echo(f"  {state.phase.value:<16} {last}")
        if state.phase in until or time.monotonic() > deadline:
            return state.phase


def _write(out: Path, name: str, rep: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(reports.to_json(rep))
    (out / f"{name}.junit.xml").write_text(reports.to_junit(rep))
    (out / f"{name}.svg").write_text(timeline_svg(rep))
    (out / f"{name}.md").write_text(reports.to_markdown(rep, chart=f"{name}.svg"))


def run_drill(plan: FailoverPlan, journal: Journal, out: Path, *, echo: Echo = print,
              fault: Fault | None = None, actor: str = "drill") -> dict[str, Any]:
    if fault is None:
        fault = MemorySiteFault(plan)
        if echo:
            echo("note: this drill uses the in-memory backends of controller.testing, "
                 "not real servers")
    engine = Engine(plan, journal)
    interval = min(s.interval for s in plan.spec.services)
    trig = plan.spec.trigger
    detect_budget = trig.dwell + (trig.consecutive_failures + 2) * interval + 30
    act_budget = sum(s.timeout for s in plan.spec.steps) + 30
    verdict: dict[str, Any] = {"plan": plan.name, "passed": False, "checks": []}

    def check(name: str, ok: bool, detail: str) -> None:
        verdict["checks"].append({"check": name, "ok": ok, "detail": detail})
        if echo:
            echo(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    if echo:
        echo(f"drill {plan.name}: baseline")
    phase = _drive(engine, (Phase.HEALTHY,), timeout=detect_budget, interval=interval, echo=echo)
    check("baseline healthy", phase is Phase.HEALTHY, f"phase {phase.value}")
    if echo:
        echo(f"inject: {fault.inject()}")
    phase = _drive(engine, (Phase.FAILED_OVER, Phase.FAILED, Phase.AWAITING_APPROVAL),
                   timeout=detect_budget + act_budget, interval=interval, echo=echo)
    failover = journal.runs(plan.name, limit=1)
    check("failed over", phase is Phase.FAILED_OVER, f"phase {phase.value}")
    if failover:
        rep = reports.build(journal, failover[0].id)
        _write(out, "failover", rep)
        verdict["failover"] = rep
        missed = [s["name"] for s in rep["steps"] if s["met"] is False]
        check("time targets met", not missed and phase is Phase.FAILED_OVER,
              "all met" if not missed else f"missed: {', '.join(missed)}")
    if phase is Phase.FAILED_OVER:
        if echo:
            echo(f"repair: {fault.clear()}")
        engine.request("failback", actor=actor, reason="drill: primary repaired")
        phase = _drive(engine, (Phase.HEALTHY, Phase.FAILED), timeout=act_budget,
                       interval=interval, echo=echo)
        check("failed back", phase is Phase.HEALTHY, f"phase {phase.value}")
        back = journal.runs(plan.name, limit=1)[0]
        rep = reports.build(journal, back.id)
        _write(out, "failback", rep)
        verdict["failback"] = rep
    else:
        fault.clear()
    verdict["passed"] = all(c["ok"] for c in verdict["checks"])
    (out / "verdict.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "verdict.json").write_text(reports.to_json(verdict))
    if echo:
        echo(f"drill {'PASSED' if verdict['passed'] else 'FAILED'}; reports in {out}/")
    return verdict

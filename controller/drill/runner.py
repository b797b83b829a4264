"""The drill: inject a fault, let the loop fail over, check the world, fail back, judge.

A drill is a real run of the engine — the same policy, executor and journal as an
incident — with the fault injected on purpose. Its verdict is machine-readable: passed
only if every check passed: the baseline was healthy, the failover ended as expected,
every step met its time target, failback restored the primary, and (in the sandbox) what
the scenario says must hold afterwards, measured on the real services. Reports (JSON,
JUnit XML, Markdown, HTML, SVG timeline) are written by `drill.reports`.

A `Fault` is anything with `inject()` and `clear()` (each returns a sentence for the
log). `MemorySiteFault` drives the in-memory world of `controller.testing` (probe keys
are site names); the sandbox's faults live in `drill.faults`. A `World` adds the checks
measured on real services after the failover and after the failback; `Expectations` say
how the failover should end (a scenario may expect a step to fail, and say why).
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from controller import report as reports
from controller.failback import left_behind
from controller.journal import Journal
from controller.loop import Engine
from controller.model import DecisionState, PermanentError, Phase, StepStatus
from controller.plan import FailoverPlan, format_duration
from controller.probes.scheduler import ProbeScheduler
from controller.probing import observe

Echo = Callable[[str], None] | None
Check = tuple[str, bool, str]


class Interrupted(KeyboardInterrupt, PermanentError):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind, tear the sandbox down, exit.

    A KeyboardInterrupt, so ordinary code lets it through; and a PermanentError, so no
    retry loop takes it for a failed attempt and tries again. It may land while the
    executor waits for a step: the step's work finishes its attempt in its own thread,
    and `run_drill` waits for it before it closes the run and (a world that outlives the
    drill) fails back what was applied; the drill also raises it again at its next tick
    (`run_drill(stop=...)`). `put_back` then says what the cleanup did."""

    def __init__(self, signame: str):
        super().__init__(f"interrupted by {signame}")
        self.signame = signame
        self.put_back: str | None = None  # what the drill's cleanup did, once it ran


class Fault(Protocol):
    def inject(self) -> str: ...
    def clear(self) -> str: ...


class World(Protocol):
    """Checks measured on the real services (the sandbox's `drill.checks.WorldChecks`)."""

    def after_failover(self, report: dict[str, Any] | None) -> list[Check]: ...
    def after_failback(self, report: dict[str, Any] | None) -> list[Check]: ...


@dataclass
class Expectations:
    """How the failover run must end; `failed_steps` maps a step to a regular expression
    its error must match (a scenario that proves the controller fails safely)."""

    phase: Phase = Phase.FAILED_OVER
    level: int | None = None
    failed_steps: dict[str, str] = field(default_factory=dict)
    failback: bool = True
    rto: float | None = None  # seconds; default: the largest step target of the plan
    rpo: float | None = None  # seconds; default: the restore's own RPO budget


class MemorySiteFault:
    """Takes the primary site down in the in-memory world of controller.testing."""

    cleanup = True  # a stopped drill repairs the site and fails back, as with real backends

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


class PlannedFailover:
    """A drill against real systems: no outage is caused. The failover is requested, as
    in a planned disaster-recovery test, and the drill then fails back — also when a step
    failed (`onFailure: abort` leaves the earlier steps applied), the run waits for an
    approval, or the drill is interrupted or breaks midway (cleanup guaranteed; what
    could not be put back is said)."""

    cleanup = True

    def __init__(self, engine: Engine, actor: str):
        self.engine, self.actor = engine, actor

    def inject(self) -> str:
        self.engine.request("failover", actor=self.actor, level=3,
                            reason="DR drill: planned failover to the backup site")
        return "planned failover requested (no outage caused: the plan's backends are real)"

    def clear(self) -> str:
        return "nothing to repair: no outage was caused"


def _uses_memory_probes(plan: FailoverPlan) -> bool:
    return any(p.kind == "memory" for s in plan.spec.services for p in s.probes)


Stop = Callable[[], str | None] | None
"""Returns the name of the signal that asked the drill to stop, if one did."""


def _drive(engine: Engine, until: tuple[Phase, ...], *, timeout: float, interval: float,
           echo: Echo, at_least: float = 0.0, stop: Stop = None) -> Phase:
    with observe(engine.plan, engine.backends) as scheduler:
        return _ticks(engine, scheduler, until, timeout=timeout, interval=interval, echo=echo,
                      at_least=at_least, stop=stop)


def _ticks(engine: Engine, scheduler: ProbeScheduler, until: tuple[Phase, ...], *,
           timeout: float, interval: float, echo: Echo, at_least: float = 0.0,
           stop: Stop = None) -> Phase:
    started = time.monotonic()
    deadline = started + timeout
    last: tuple[Phase, DecisionState] | None = None
    while True:
        scheduler.news.wait(interval)  # a failing probe round runs a cycle at once
        state = engine.tick(scheduler.drain())
        signame = stop() if stop else None
        if signame:
            raise Interrupted(signame)
        decision = state.decision
        said = None if decision is None else (state.phase, decision.state)
        if echo and decision and said != last:  # a new kind of decision
            last = said
            echo(f"  {state.phase.value:<16} {decision.sentence}")
        now = time.monotonic()
        if (state.phase in until and now - started >= at_least) or now > deadline:
            return state.phase


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds < 120 else format_duration(round(seconds))


def objectives(rep: dict[str, Any] | None, expect: Expectations | None) -> dict[str, Any]:
    """RTO and RPO achieved against the plan: RTO = detection to the last step done, for
    a failover that ended FailedOver (a failed one recovered nothing); RPO = the age of
    the restored data (the restore step's evidence), or the replication lag a promoted
    standby had (the promote step's)."""
    out: dict[str, Any] = {"rto": None, "rpo": None}
    if rep is None:
        return out
    run, steps = rep["run"], rep["steps"]
    targets = [s["targetSeconds"] for s in steps if s["targetSeconds"]]
    target = expect.rto if expect and expect.rto is not None else (max(targets) if targets
                                                                     else None)
    if run["finishedAt"] is not None and run["phase"] == Phase.FAILED_OVER.value:
        achieved = run["finishedAt"] - run["detectedAt"]
        out["rto"] = {"achievedSeconds": round(achieved, 3), "targetSeconds": target,
                      "met": None if target is None else achieved <= target,
                      "tripSeconds": round(run["startedAt"] - run["detectedAt"], 3),
                      "source": "scenario" if expect and expect.rto is not None
                      else "largest step target of the plan"}
    for s in steps:
        ev = s["evidence"] or {}
        if "rpoSeconds" in ev:  # a restore, a promotion: the data it brought back is this old
            budget = expect.rpo if expect and expect.rpo is not None else ev.get(
                "rpoBudgetSeconds")
            out["rpo"] = {"achievedSeconds": ev["rpoSeconds"], "targetSeconds": budget,
                          "met": None if budget is None else ev["rpoSeconds"] <= budget,
                          "step": s["name"],
                          "source": "scenario" if expect and expect.rpo is not None
                          else "restore target's rpo" if s["action"] == "restore"
                          else f"{s['action']} step's rpo"}
            out["rpo"] |= {k: ev[k] for k in ("backup", "dataAsOf") if ev.get(k)}
    return out


def _judge_failover(rep: dict[str, Any], phase: Phase, expect: Expectations | None
                    ) -> list[Check]:
    steps = rep["steps"]
    expected = expect.failed_steps if expect else {}
    out: list[Check] = []
    if expect is not None:
        for name, pattern in expected.items():
            step = next((s for s in steps if s["name"] == name), None)
            ok = bool(step and step["status"] == "failed"
                      and re.search(pattern, step["error"] or "", re.I))
            detail = (f"{name} {step['status']}: {step['error'] or 'no error'}" if step
                      else f"{name} never ran")
            out.append((f"step {name} fails as expected (/{pattern}/)", ok, detail))
        failed = [s for s in steps if s["status"] == "failed" and s["name"] not in expected]
        out.append(("steps succeeded", not failed, "; ".join(
            f"{s['name']} failed: {s['error']}" for s in failed) or
            f"{sum(s['status'] == 'succeeded' for s in steps)} of {len(steps)} steps "
            "succeeded" + (f", {len(expected)} failed as expected" if expected else "")))
        if expect.level is not None:
            level = rep["run"]["level"]
            out.append((f"response level {expect.level}", level == expect.level,
                        f"the run was level {level}"))
    missed = [s for s in steps if s["met"] is False and s["name"] not in expected
              and (expect is None or s["status"] != "failed")]
    ok = not missed and (phase is Phase.FAILED_OVER or expect is not None)
    out.append(("time targets met", ok, "all met" if not missed else "missed: " + ", ".join(
        f"{s['name']} (done {_fmt(s['sinceDetectionSeconds'])} after detection, target "
        f"{_fmt(s['targetSeconds'])})" if s["status"] != "failed" else s["name"]
        for s in missed)))
    return out


def run_drill(plan: FailoverPlan, journal: Journal, out: Path, *, echo: Echo = print,
              fault: Fault | None = None, actor: str = "drill",
              expect: Expectations | None = None, world: World | None = None,
              warmup: float = 0.0, write: bool = True, stop: Stop = None) -> dict[str, Any]:
    """Run the drill and return the verdict; `write` also writes every report to `out`."""
    from controller.drill.reports import write_reports

    engine = Engine(plan, journal)
    if fault is None and _uses_memory_probes(plan):
        fault = MemorySiteFault(plan)
        if echo:
            echo("note: this drill uses the in-memory backends of controller.testing, "
                 "not real servers")
    elif fault is None:
        fault = PlannedFailover(engine, actor)
        if echo:
            echo("note: real backends: a planned failover and failback, no outage caused")
    verdict: dict[str, Any] = {"plan": plan.name, "passed": False, "checks": [],
                               "timeline": {}, "faults": []}
    try:
        verdict = _run(engine, fault, verdict, echo=echo, actor=actor, expect=expect,
                       world=world, warmup=warmup, stop=stop)
    except BaseException as exc:  # interrupted or broken: leave no run open in the journal
        why = f"drill stopped: {type(exc).__name__}: {exc}"
        if not getattr(fault, "cleanup", False):  # the sandbox: torn down by its owner
            _abandon(engine, why)
            raise
        try:  # a world that outlives the drill: put back whatever the failover applied
            said = fault.clear()
            if echo:
                echo(f"repair: {said}")
            _, said, _ = _put_back(engine, actor, echo, why=why,
                                   reason=f"{why}: reverting what it applied")
        except Exception as failed:
            said = (f"could NOT put the world back: {type(failed).__name__}: {failed}; "
                    f"check it by hand (`failoverctl status`, the journal)")
            _abandon(engine, why)
        if echo:
            echo(f"cleanup: {said}")
        if isinstance(exc, Interrupted):
            exc.put_back = said
        else:
            exc.add_note(f"cleanup: {said}")
        raise
    finally:
        engine.release()
    if write:
        write_reports(out, verdict, records=plan.spec.records)
        if echo:
            echo(f"drill {'PASSED' if verdict['passed'] else 'FAILED'}; reports in {out}/ "
                 f"(report.md, report.html; drill.prom for Prometheus)")
    return verdict


def _settle_steps(engine: Engine, echo: Echo) -> None:
    """Wait for step work still running in its thread (an interrupt stops the drill, not
    the write in progress), so a revert never races the change it undoes."""
    budget = time.monotonic() + max(s.timeout for s in engine.plan.spec.steps) + 10
    ours = tuple(f"step-{r.id}/" for r in engine.journal.runs(engine.plan.name, limit=10))
    for t in threading.enumerate():
        if t.name.startswith(ours) and t.is_alive():
            if echo:
                echo(f"cleanup: waiting for {t.name.removeprefix('step-')} to stop")
            t.join(max(0.0, budget - time.monotonic()))


def _put_back(engine: Engine, actor: str, echo: Echo, *, why: str, reason: str,
              stop: Stop = None) -> tuple[bool, str, dict[str, Any] | None]:
    """Fail back whatever the failover left applied — finished, failed (`onFailure:
    abort` leaves earlier steps in place), waiting for approval, or cut short — and say
    what could not be put back. Returns (all put back, the sentence, the failback's
    report)."""
    plan, journal = engine.plan, engine.journal
    _settle_steps(engine, echo)
    if journal.active_run(plan.name) is not None:  # close it: nothing may resume it
        _abandon(engine, why)
    phase = engine.state().phase
    if phase in (Phase.HEALTHY, Phase.DEGRADED):
        return True, f"nothing to put back: the plan is {phase.value}", None
    refusal = engine.refusal("failback", phase)
    if refusal is not None:  # no step of the failover wrote anything a revert undoes
        return (True, f"nothing to put back: no traffic or DNS change of the failover to "
                f"revert (the engine: {refusal})", None)
    engine.request("failback", actor=actor, reason=reason)
    interval = min(s.interval for s in plan.spec.services)
    budget = sum(s.timeout * (s.retries + 1) for s in plan.spec.steps) + 30
    phase = _drive(engine, (Phase.HEALTHY, Phase.FAILED), timeout=budget, interval=interval,
                   echo=echo, stop=stop)
    last = journal.runs(plan.name, limit=1)[0]
    back = reports.build(journal, last.id) if last.kind == "failback" else None
    steps = back["steps"] if back else []
    missing = [f"{s['name']} {s['status']}" + (f": {s['error']}" if s["error"] else "")
               for s in steps if s["status"] not in ("succeeded", "reverted")]
    if back is None:
        missing.append(f"no failback run started (phase {phase.value})")
    elif phase is not Phase.HEALTHY and not missing:
        missing.append(f"the failback ended {phase.value}: {last.outcome}")
    left = [item for s in steps for item in left_behind(s["evidence"] or {})]
    said = f"failback ended {phase.value}"
    if missing:
        said += "; could NOT put back: " + "; ".join(missing)
    if left:
        said += "; left as a person changed it during the drill: " + ", ".join(left)
    if not missing and not left:
        said += ": " + ", ".join(s["name"] for s in steps) + " put back"
    return not missing and not left, said, back


def _abandon(engine: Engine, why: str) -> None:
    """Close the plan's open run as Failed, saying why, and each step it left running
    (a signal can land between two saves of a step, where the executor cannot record
    it) as failed, so `status` does not show work going on in a world that is gone."""
    run = engine.journal.active_run(engine.plan.name)
    if run is not None:
        now = time.time()
        for rec in engine.journal.steps(run.id):
            if rec.status is StepStatus.RUNNING:
                engine.journal.save_step(replace(
                    rec, status=StepStatus.FAILED, error=why, met=False, finished_at=now,
                    elapsed_s=None if rec.started_at is None else
                    round(now - rec.started_at, 6)))
        engine.journal.update_run(run.id, phase=Phase.FAILED, finished_at=time.time(),
                                  outcome=why)
        engine.journal.save_plan_state(replace(engine.state(), phase=Phase.FAILED,
                                               last_decision=why, updated_at=time.time()))


def _run(engine: Engine, fault: Fault, verdict: dict[str, Any], *, echo: Echo, actor: str,
         expect: Expectations | None, world: World | None, warmup: float,
         stop: Stop) -> dict[str, Any]:
    plan, journal = engine.plan, engine.journal
    interval = min(s.interval for s in plan.spec.services)
    trig = plan.spec.trigger
    detect_budget = trig.dwell + (trig.consecutive_failures + 2) * interval + 30
    act_budget = sum(s.timeout * (s.retries + 1) for s in plan.spec.steps) + 30
    stage = "baseline"

    def check(name: str, ok: bool, detail: str) -> None:
        verdict["checks"].append({"check": name, "ok": ok, "detail": detail, "stage": stage})
        if echo:
            echo(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    def mark(name: str) -> None:
        verdict["timeline"][name] = time.time()

    if echo:
        echo(f"drill {plan.name}: baseline")
    phase = _drive(engine, (Phase.HEALTHY,), timeout=detect_budget + warmup, interval=interval,
                   echo=echo, at_least=warmup, stop=stop)
    check("baseline healthy", phase is Phase.HEALTHY, f"phase {phase.value}")
    stage = "failover"
    mark("injectedAt")
    said = fault.inject()
    verdict["faults"].append(said)
    if echo:
        echo(f"inject: {said}")
    until = (Phase.FAILED_OVER, Phase.FAILED, Phase.AWAITING_APPROVAL)
    phase = _drive(engine, until, timeout=detect_budget + act_budget, interval=interval,
                   echo=echo, stop=stop)
    engine.flush_notices()  # notices go out off the step path: the last ones land first
    mark("failoverEndedAt")
    runs = [r for r in journal.runs(plan.name, limit=1)
            if r.kind == "failover" and r.started_at >= verdict["timeline"]["injectedAt"]]
    failover = reports.build(journal, runs[0].id) if runs else None
    want = expect.phase if expect else Phase.FAILED_OVER
    name = "failed over" if want is Phase.FAILED_OVER else f"failover ended {want.value}"
    check(name, phase is want, f"phase {phase.value}" + (
        f": {failover['run']['outcome']}" if failover and failover["run"]["outcome"] else ""))
    if failover is not None:
        verdict["failover"] = failover
        verdict["timeline"]["detectedAt"] = failover["run"]["detectedAt"]
        verdict["timeline"]["trippedAt"] = failover["run"]["startedAt"]
        for item in _judge_failover(failover, phase, expect):
            check(*item)
    if world is not None and failover is not None:
        for item in world.after_failover(failover):
            check(*item)
    stage = "failback"
    said = fault.clear()
    mark("repairedAt")
    if echo:
        echo(f"repair: {said}")
    back = None
    # fail back whatever the failover left applied: it failed over, or it failed midway
    # (`onFailure: abort` leaves the earlier steps in place), or a world that outlives
    # the drill was left waiting or half-done; a scenario may say not to (failback: false)
    if (expect is None or expect.failback) and (
            phase in (Phase.FAILED_OVER, Phase.FAILED)
            or (getattr(fault, "cleanup", False) and phase not in (Phase.HEALTHY,
                                                                   Phase.DEGRADED))):
        ok, said, back = _put_back(engine, actor, echo, stop=stop,
                                   why=f"drill: the failover ended {phase.value}",
                                   reason="drill: primary repaired")
        engine.flush_notices()
        mark("failedBackAt")
        check("failed back", ok, said)
        if back is not None:
            verdict["failback"] = back
    if world is not None:
        for item in world.after_failback(back):
            check(*item)
    stage = "objectives"
    if expect is not None:
        verdict["objectives"] = objectives(failover, expect)
        for key, label in (("rto", "RTO"), ("rpo", "RPO")):
            obj = verdict["objectives"][key]
            if obj and obj["targetSeconds"] is not None:
                check(f"{label} within plan", bool(obj["met"]),
                      f"{_fmt(obj['achievedSeconds'])} achieved, plan "
                      f"{_fmt(obj['targetSeconds'])}")
    else:
        verdict["objectives"] = objectives(failover, None)
    verdict["passed"] = all(c["ok"] for c in verdict["checks"])
    return verdict


class Signals:
    """`with Signals(echo) as stop:` SIGINT, SIGTERM and SIGHUP raise `Interrupted` once;
    a later one is noted and ignored — until the process exits, once one was taken — so
    neither putting the world back nor the exit code it ends with is cut short. `stop()`
    names the signal (for `run_drill(stop=...)`). Only the main thread can take signals:
    elsewhere nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, echo: Echo = None):
        self.echo = echo
        self.signame: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Callable[[], str | None]:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return lambda: self.signame

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            # once a signal asked for a stop, the process is on its way out with that
            # signal's exit code: a later one is ignored, never fatal — SIG_IGN, since the
            # interpreter puts SIG_DFL back for a Python handler while it shuts down
            signal.signal(sig, signal.SIG_IGN if self.signame else handler)
        self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signame:
            print(f"drill: {name} again; still stopping (the world is put back first), "
                  "please wait", file=sys.stderr, flush=True)
            return
        self.signame = name
        raise Interrupted(name)


EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def run_plan_for_cli(plan: FailoverPlan, journal: Journal, out: Path, *, echo: Echo,
                     actor: str) -> dict[str, Any]:
    """`failoverctl drill PLAN`: the drill with SIGINT, SIGTERM and SIGHUP all putting the
    world back before it exits (130, 143, 129), saying what it could not put back; a
    drill that breaks says so and exits 1, after the same cleanup."""
    signals = Signals(echo)
    try:
        with signals as stop:
            return run_drill(plan, journal, out, echo=echo, actor=actor, stop=stop)
    except Interrupted as exc:
        print(f"error: drill interrupted by {exc.signame}; "
              f"{exc.put_back or 'nothing was put back'}", file=sys.stderr)
        sys.exit(EXIT_SIGNAL.get(exc.signame, 130))
    except KeyboardInterrupt as exc:  # before the handlers were installed
        print(f"error: drill interrupted{'; ' + '; '.join(getattr(exc, '__notes__', []))}",
              file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        notes = "; ".join(getattr(exc, "__notes__", []))
        print(f"error: drill {plan.name} broke: {type(exc).__name__}: {exc}"
              + (f"; {notes}" if notes else ""), file=sys.stderr)
        sys.exit(1)

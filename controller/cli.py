"""`failoverctl`: validate and preview plans, run the loop, request and follow failovers.

Exit codes (also in the README):
  0  success
  1  the operation ran and failed (a run ended Failed, a drill missed its verdict)
  2  bad input: an invalid plan, an unknown option, an unknown run
  3  the journal cannot be used (corrupt or unreadable); it is never replaced silently
  4  waiting: the run needs an approval (`failoverctl approve RUN`) or is still going
`-o json` prints machine-readable output on every command a script would parse.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from controller import console, coordination, remote
from controller import report as reports
from controller.actions import StepContext, would_change
from controller.api import Health, serve
from controller.config import Settings
from controller.console import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_JOURNAL,
    EXIT_OK,
    EXIT_WAITING,
    CliError,
)
from controller.coordination import CoordinationError
from controller.failback import revert_steps
from controller.journal import Journal, JournalError, Run
from controller.loop import Engine, observe
from controller.model import Phase
from controller.plan import FailoverPlan, PlanError, format_duration, json_schema, load_plan
from controller.secrets import RedactingFilter, Secrets

PLAN_ARG = click.argument("plan_file", metavar="PLAN|fop/NAME", type=click.Path())
OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                      show_default=True, help="output format")


class Ctx:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._journal: Journal | None = None

    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.settings.journal)
        return self._journal


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(path: str) -> FailoverPlan:
    try:
        return load_plan(path)
    except PlanError as err:
        click.echo(f"{err.source}: invalid plan", err=True)
        for problem in err.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(EXIT_INPUT)


def _engine(obj: Ctx, plan: FailoverPlan) -> Engine:
    """An engine that may act on `plan`: it holds the journal's lease and the lease of the
    coordinator the plan names (`spec.coordination`: a lock on this host by default, so
    two failoverctl processes of any user never act on one plan at once; or etcd)."""
    try:
        coordinator = coordination.for_plan(plan, secrets=Secrets())
    except CoordinationError as exc:
        _fail(str(exc), EXIT_INPUT)
    return Engine(plan, obj.journal(), lease_ttl=obj.settings.lease_ttl,
                  coordinator=coordinator)


def _via_cluster(plan_file: str, namespace: str | None) -> tuple[str, str | None]:
    """A plan file with `spec.coordination.kind: kubernetes` is acted on by the operator
    only: the CLI requests through its FailoverPlan resource, exactly as with fop/NAME."""
    if remote.is_resource(plan_file) or not Path(plan_file).is_file():
        return plan_file, namespace
    plan = _load(plan_file)
    if plan.spec.coordination.kind != "kubernetes":
        return plan_file, namespace
    try:
        return f"fop/{plan.name}", namespace or coordination.kubernetes_namespace(plan)
    except CoordinationError as exc:
        _fail(str(exc), EXIT_INPUT)
        raise


def _emit(output: str, data: Any, text: Callable[[], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if output == "json"
               else text())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--journal", type=click.Path(dir_okay=False), envvar="FAILOVER_JOURNAL",
              help="journal file (default ~/.local/state/failoverctl/journal.db)")
@click.option("-v", "--verbose", is_flag=True, help="log every decision and step")
@click.pass_context
def main(ctx: click.Context, journal: str | None, verbose: bool) -> None:
    """Fail traffic, DNS and databases over to the backup site, step by step, on the record."""
    settings = Settings()
    if journal:
        settings.journal = Path(journal)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level="DEBUG" if verbose else settings.log_level, handlers=[handler])
    if not verbose:
        logging.getLogger("controller").setLevel("WARNING")
    ctx.obj = Ctx(settings)
    ctx.call_on_close(lambda: ctx.obj._journal and ctx.obj._journal.close())


def _with_journal(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a corrupt/unreadable journal into exit code 3 with the reason (and a CliError
    into its own code)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JournalError as exc:
            _fail(str(exc), EXIT_JOURNAL)
        except CliError as exc:
            _fail(str(exc), exc.code)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@main.command()
@click.argument("plans", nargs=-1, required=True, type=click.Path())
@OUTPUT
def validate(plans: tuple[str, ...], output: str) -> None:
    """Check plan files; name every problem's field and its fix (exit 2 if any is invalid)."""
    results: list[dict[str, Any]] = []
    for path in plans:
        try:
            plan = load_plan(path)
            results.append({"file": path, "plan": plan.name, "valid": True, "problems": []})
        except PlanError as err:
            results.append({"file": path, "plan": None, "valid": False,
                            "problems": err.problems})

    def text() -> str:
        lines = []
        for r in results:
            if r["valid"]:
                lines.append(f"ok      {r['file']} (plan {r['plan']})")
            else:
                lines.append(f"invalid {r['file']}")
                lines += [f"  - {p}" for p in r["problems"]]
        return "\n".join(lines)

    _emit(output, results, text)
    sys.exit(EXIT_OK if all(r["valid"] for r in results) else EXIT_INPUT)


@main.command("plan")
@click.argument("plan_file", type=click.Path())
@OUTPUT
def plan_cmd(plan_file: str, output: str) -> None:
    """Dry run: what a failover would do, in order, with targets. Changes nothing."""
    plan = _load(plan_file)
    steps = console.preview(plan)

    def text() -> str:
        sp = plan.spec
        lines = [f"plan {plan.name}: {sp.sites.primary.name} -> {sp.sites.backup.name}, "
                 f"mode {sp.mode}; trips below {sp.trigger.availability_floor:g} % core "
                 f"availability for {format_duration(sp.trigger.dwell)}", ""]
        for s in steps:
            target = format_duration(s["target"]) if s["target"] else "none"
            gate = ", needs approval" if s["approval"] else ""
            lines.append(f"{s['order']:>2}. {s['name']}: {s['does']}")
            lines.append(f"    target {target} from detection, timeout "
                         f"{format_duration(s['timeout'])}, {s['retries']} retries, "
                         f"on failure {s['onFailure']}{gate}")
        return "\n".join(lines)

    _emit(output, {"plan": plan.name, "steps": steps}, text)


@main.command()
@click.argument("plan_file", type=click.Path())
@click.option("--trace", "traces", multiple=True, required=True, type=click.Path(),
              help="JSONL or CSV trace of timestamped samples (repeatable; a directory "
              "replays every trace in it)")
@click.option("--every", type=float, default=1.0, show_default=True,
              help="seconds between simulated ticks")
@OUTPUT
def simulate(plan_file: str, traces: tuple[str, ...], every: float, output: str) -> None:
    """Replay health traces through the policy: when it would trip, at which level, why."""
    from controller.probes.trace import TraceError, load_corpus
    from controller.simulate import replay

    plan = _load(plan_file)
    try:
        loaded = load_corpus(*traces)
    except (TraceError, OSError) as exc:
        _fail(str(exc), EXIT_INPUT)
    results = [replay(plan, t, every=every) for t in loaded]

    def text() -> str:
        lines = []
        for r in results:
            verdict = "" if r.label is None else (" PASS" if not r.problems else " FAIL")
            lines.append(f"{r.trace}{verdict}" + (f" ({r.label})" if r.label else ""))
            for at, d in r.decisions:
                lines.append(f"  {at:8.1f} s  {d.action:<5} {d.sentence}")
            lines += [f"  problem: {p}" for p in r.problems]
        return "\n".join(lines)

    _emit(output, [r.to_json() for r in results], text)
    sys.exit(EXIT_FAILED if any(r.problems for r in results) else EXIT_OK)


@main.command()
@click.option("--crd", is_flag=True, help="print the CustomResourceDefinition (YAML) instead")
def schema(crd: bool) -> None:
    """Print the FailoverPlan JSON Schema, or the CRD generated from it."""
    if crd:
        import yaml

        from controller.crd import crd as make_crd

        click.echo("# generated by `failoverctl schema --crd`; do not edit by hand\n"
                   + yaml.safe_dump(make_crd(), sort_keys=False))
    else:
        click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))


def _follow(journal: Journal, run_id: str, *, engine: Engine, output: str,
            timeout: float, plan_file: str) -> int:
    """Watch a run until it ends or waits for approval, driving it whenever this process
    can hold the plan's lease (it stands by while a running controller holds it)."""
    progress = console.Progress()
    deadline = time.monotonic() + timeout
    while True:
        engine.reconcile()
        run = journal.run(run_id)
        assert run is not None
        if output == "text":
            progress.show(rec.to_json() for rec in journal.steps(run_id))
        if run.finished_at is not None or run.phase is Phase.AWAITING_APPROVAL:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return _finish_run(journal, run, output, plan_file)


def _finish_run(journal: Journal, run: Run, output: str, plan_file: str) -> int:
    rep = reports.build(journal, run.id)
    click.echo(reports.to_json(rep) if output == "json"
               else console.summary(rep["run"], rep["steps"], f"--plan {plan_file}"))
    return console.exit_code(rep["run"])


def _changes(engine: Engine, kind: str) -> list[dict[str, Any]]:
    """What each step would change, read from the live backends (read-only)."""
    ctx = StepContext(plan=engine.plan, run_id="dry-run", level=None, backends=engine.backends,
                      lookup_evidence=lambda r, s: engine.journal.step(r, s).evidence)
    steps = engine.plan.spec.steps
    if kind == "failback":
        changes = []
        for d in revert_steps(engine.journal, engine.plan.name):
            of = d["params"]["of"]
            before = engine.journal.step(of["run"], of["step"]).evidence.get("before")
            changes.append({"name": d["name"], "action": "revert",
                            "change": f"restore the original saved before {of['step']}: "
                                      f"{before}"})
        return changes
    out = []
    for step in steps:
        try:
            change = would_change(step, ctx)
        except Exception as exc:
            change = f"cannot read the current state: {exc}"
        out.append({"name": step.name, "action": step.action,
                    "target": step.target, "change": change,
                    "does": console.does(engine.plan, step)})
    return out


def _preflight(engine: Engine, kind: str, output: str) -> dict[str, Any]:
    changes = _changes(engine, kind)
    ready = engine.check_readiness() if kind == "failover" else None
    if output == "text":
        sites = engine.plan.spec.sites
        console.show_preflight(f"{kind} of plan {engine.plan.name}: {sites.primary.name} -> "
                               f"{sites.backup.name}" if kind == "failover"
                               else f"failback of plan {engine.plan.name}", changes, ready)
    return {"steps": changes, "readiness": ready}


def _request(obj: Ctx, plan_file: str, kind: str, reason: str, actor: str | None,
             output: str, wait: float, level: int | None = None, *, yes: bool = False,
             dry_run: bool = False, namespace: str | None = None,
             kubeconfig: str | None = None) -> None:
    who = actor or obj.settings.actor
    plan_file, namespace = _via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        sys.exit(remote.request(plan_file, namespace, kubeconfig, kind=kind, reason=reason,
                                actor=who, level=level, yes=yes, dry_run=dry_run,
                                output=output, wait=wait))
    plan = _load(plan_file)
    journal = obj.journal()
    engine = _engine(obj, plan)
    refusal = engine.refusal(kind)
    if refusal is not None:
        _fail(f"{kind} of {plan.name} refused: {refusal}", EXIT_INPUT)
    preview = _preflight(engine, kind, output)
    if dry_run:
        if output == "json":
            click.echo(json.dumps({"dryRun": True, **preview}, indent=2, default=str))
        else:
            click.echo("dry run: nothing was changed")
        sys.exit(EXIT_OK)
    console.confirm(kind, plan.name, yes)
    request_id = engine.request(kind, actor=who, reason=reason, level=level)
    if not engine.holds_lease() and output == "text":
        click.echo(f"a running controller holds plan {plan.name}; following its progress")
    deadline = time.monotonic() + wait
    try:
        run_id = None
        while run_id is None:
            engine.reconcile()
            run_id = (journal.request(request_id) or {}).get("run_id")
            if run_id is None:
                if time.monotonic() > deadline:
                    _fail(f"request {request_id} not picked up within {wait:.0f} s",
                          EXIT_WAITING)
                time.sleep(0.2)
        if output == "text":
            click.echo(f"{kind} of {plan.name} requested by {who}: run {run_id}")
        code = _follow(journal, run_id, engine=engine, output=output,
                       timeout=max(deadline - time.monotonic(), 0), plan_file=plan_file)
    finally:
        engine.release()
    sys.exit(code)


@main.command()
@PLAN_ARG
@click.option("--reason", required=True, help="why, for the audit trail and notices")
@click.option("--as", "actor", help="who requests it (default $FAILOVER_ACTOR or $USER)")
@click.option("--wait", default=3600.0, show_default=True, help="seconds to follow progress")
@click.option("--level", type=click.IntRange(1, 4), default=3, show_default=True,
              help="response level for notices (1 most severe)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
@remote.options
@OUTPUT
@click.pass_obj
@_with_journal
def failover(obj: Ctx, plan_file: str, reason: str, actor: str | None, wait: float,
             level: int, yes: bool, dry_run: bool, namespace: str | None,
             kubeconfig: str | None, output: str) -> None:
    """Preview, confirm, then request a controlled failover and follow it live.

    A plan file: drives the run itself when no controller is running, otherwise follows
    its progress. fop/NAME: asks the operator in the cluster and follows the status."""
    _request(obj, plan_file, "failover", reason, actor, output, wait, level, yes=yes,
             dry_run=dry_run, namespace=namespace, kubeconfig=kubeconfig)


@main.command()
@PLAN_ARG
@click.option("--reason", required=True, help="why, for the audit trail and notices")
@click.option("--as", "actor", help="who requests it (default $FAILOVER_ACTOR or $USER)")
@click.option("--wait", default=3600.0, show_default=True, help="seconds to follow progress")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
@remote.options
@OUTPUT
@click.pass_obj
@_with_journal
def failback(obj: Ctx, plan_file: str, reason: str, actor: str | None, wait: float,
             yes: bool, dry_run: bool, namespace: str | None, kubeconfig: str | None,
             output: str) -> None:
    """Revert traffic and DNS to exactly what they were before the failover (reverse order)."""
    _request(obj, plan_file, "failback", reason, actor, output, wait, yes=yes, dry_run=dry_run,
             namespace=namespace, kubeconfig=kubeconfig)


@main.command()
@click.argument("plan_file", type=click.Path())
@OUTPUT
@click.pass_obj
@_with_journal
def ready(obj: Ctx, plan_file: str, output: str) -> None:
    """Pre-flight: is the backup site ready to take over? (exit 1 if any check fails)"""
    engine = Engine(_load(plan_file), obj.journal(), lease_ttl=obj.settings.lease_ttl)
    result = engine.check_readiness()

    def text() -> str:
        lines = [f"backup site readiness of {engine.plan.name}: {result['score']:g} %"]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}"
                  for c in result["checks"]]
        return "\n".join(lines)

    _emit(output, result, text)
    sys.exit(EXIT_OK if not result["failed"] else EXIT_FAILED)


@main.command()
@click.argument("run_id")
@click.option("--plan", "plan_file", required=True, type=click.Path(),
              help="the plan file of the run, or fop/NAME (checks the approver list)")
@click.option("--step", default="", help="approve one gated step instead of the whole run")
@click.option("--as", "actor", help="who approves (default $FAILOVER_ACTOR or $USER)")
@click.option("--wait", default=3600.0, show_default=True, help="seconds to follow progress")
@remote.options
@OUTPUT
@click.pass_obj
@_with_journal
def approve(obj: Ctx, run_id: str, plan_file: str, step: str, actor: str | None,
            wait: float, namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """Approve a run (or one gated step) and follow it as it continues."""
    plan_file, namespace = _via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        sys.exit(remote.approve(plan_file, namespace, kubeconfig, run_id=run_id, step=step,
                                actor=actor or obj.settings.actor, wait=wait, output=output))
    plan = _load(plan_file)
    journal = obj.journal()
    run = journal.run(run_id)
    if run is None or run.plan != plan.name:
        _fail(f"no run {run_id!r} of plan {plan.name} in {journal.path}", EXIT_INPUT)
    engine = _engine(obj, plan)
    who = actor or obj.settings.actor
    try:
        engine.approve(run_id, actor=who, step=step)
    except PermissionError as exc:
        _fail(str(exc), EXIT_INPUT)
    if output == "text":
        click.echo(f"approved {'step ' + step if step else 'run'} of {run_id} as {who}")
    try:  # continue the run here unless a running controller holds the plan
        code = _follow(journal, run_id, engine=engine, output=output, timeout=wait,
                       plan_file=plan_file)
    finally:
        engine.release()
    sys.exit(code)


@main.command()
@click.argument("run_id")
@click.argument("step")
@click.option("--plan", "plan_file", required=True, type=click.Path(),
              help="the plan file of the run, or fop/NAME")
@click.option("--as", "actor", help="who finished it (default $FAILOVER_ACTOR or $USER)")
@click.option("--wait", default=120.0, show_default=True,
              help="with fop/NAME: seconds to wait for the operator to record it")
@remote.options
@OUTPUT
@click.pass_obj
@_with_journal
def done(obj: Ctx, run_id: str, step: str, plan_file: str, actor: str | None, wait: float,
         namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """Record that a person finished a human step (acknowledged, escalated, analysed...)."""
    plan_file, namespace = _via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        sys.exit(remote.done(plan_file, namespace, kubeconfig, run_id=run_id, step=step,
                             actor=actor or obj.settings.actor, wait=wait, output=output))
    plan = _load(plan_file)
    engine = _engine(obj, plan)
    who = actor or obj.settings.actor
    try:
        rec = engine.done(run_id, step, actor=who)
    except LookupError as exc:
        _fail(str(exc), EXIT_INPUT)
    engine.reconcile()  # a blocking human step lets the run go on at once
    engine.release()
    _emit(output, rec.to_json(), lambda: console.step_line(rec.to_json()) + f"  by {who}")


@main.command()
@click.argument("plan_file", metavar="[PLAN|fop/NAME]", required=False, type=click.Path())
@remote.options
@OUTPUT
@click.pass_obj
@_with_journal
def status(obj: Ctx, plan_file: str | None, namespace: str | None, kubeconfig: str | None,
           output: str) -> None:
    """Show each plan's phase, level, active site, last decision and current run.

    fop/NAME (or -n NS alone: every FailoverPlan there) reads the resources' status,
    with conditions and readiness."""
    if remote.is_resource(plan_file) or (plan_file is None and namespace):
        sys.exit(remote.status(plan_file, namespace, kubeconfig, output))
    journal = obj.journal()
    states = journal.plan_states()
    if plan_file:
        name = _load(plan_file).name
        states = [s for s in states if s.plan == name]
    data: list[dict[str, Any]] = []
    for st in states:
        run = journal.runs(st.plan, limit=1)
        data.append({
            "plan": st.plan, "phase": st.phase.value, "level": st.level,
            "activeSite": st.active_site, "lastDecision": st.last_decision,
            "readiness": st.readiness or None,
            "run": ({**run[0].to_json(), "steps": [s.to_json() for s in journal.steps(run[0].id)]}
                    if run else None),
        })

    _emit(output, data, lambda: console.status_text(data)
          or f"no plans recorded in {journal.path}")


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Choice(["text", "json", "junit", "markdown"]),
              default="text", show_default=True)
@click.pass_obj
@_with_journal
def report(obj: Ctx, run_id: str, output: str) -> None:
    """A run's steps against their time targets (JSON, JUnit XML for CI, Markdown)."""
    try:
        rep = reports.build(obj.journal(), run_id)
    except reports.UnknownRun as exc:
        _fail(str(exc), EXIT_INPUT)
    render = {"json": reports.to_json, "junit": reports.to_junit,
              "markdown": reports.to_markdown, "text": reports.to_markdown}[output]
    click.echo(render(rep))


@main.command()
@click.argument("plans", nargs=-1, required=True, type=click.Path())
@click.option("--interval", type=float, help="seconds between cycles (default $FAILOVER_TICK)")
@click.option("--ticks", type=int, help="stop after this many cycles (default: run forever)")
@click.option("--until", "until", type=click.Choice([p.value for p in Phase]),
              help="stop once every plan reaches this phase")
@click.option("--listen", metavar="HOST:PORT",
              help="serve /healthz, /readyz and /metrics here (e.g. 0.0.0.0:8080)")
@click.pass_obj
@_with_journal
def run(obj: Ctx, plans: tuple[str, ...], interval: float | None, ticks: int | None,
        until: str | None, listen: str | None) -> None:
    """The reconcile loop against plan files: probe, decide, act, record. Ctrl-C stops it."""
    loaded = [_load(p) for p in plans]
    for plan in loaded:
        if plan.spec.coordination.kind == "kubernetes":
            _fail(f"plan {plan.name} is acted on by the operator in the cluster "
                  "(spec.coordination.kind: kubernetes); run `failoverctl operator` there, "
                  f"or request with `failoverctl failover|failback fop/{plan.name}`",
                  EXIT_INPUT)
    journal = obj.journal()
    engines = [_engine(obj, p) for p in loaded]
    every = interval or obj.settings.tick
    health = Health(stale_after=max(10 * every, 30.0), ready_check=lambda: journal.lease("-"))
    if listen:
        host, _, port = listen.rpartition(":")
        serve(health, host or "0.0.0.0", int(port))
    schedulers = [observe(e.plan, e.backends) for e in engines]
    for scheduler in schedulers:
        scheduler.start()
    count = 0
    try:
        while ticks is None or count < ticks:
            count += 1
            time.sleep(every)
            for engine, scheduler in zip(engines, schedulers, strict=True):
                state = engine.tick(scheduler.drain())
                click.echo(f"{state.plan}: {state.phase.value} — {state.last_decision}")
            health.beat()
            if until and all(e.state().phase.value == until for e in engines):
                break
    except KeyboardInterrupt:
        click.echo("stopped; the journal holds every finished step, `run` again to resume")
    finally:
        for scheduler in schedulers:
            scheduler.stop()
        for engine in engines:
            engine.release()
    failed = any(e.state().phase is Phase.FAILED for e in engines)
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


from controller import cli_ops  # noqa: E402,F401  (registers its commands on `main`)

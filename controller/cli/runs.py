"""`failoverctl failover | failback | ready | approve | done | status | report`: request a
run, follow it, answer what it waits for, and read the record.

Who acts is proven, not claimed: on a plan file, the operating-system login
(controller/cli/login.py), or for an approval the signer of an SSH signature
(controller/signing.py); with fop/NAME, the name the API server authenticated
(controller/remote.py)."""


from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from controller import console, remote, signing
from controller import report as reports
from controller.cli.base import (
    CONFIRM,
    JOURNAL,
    JOURNAL_OR_CLUSTER,
    PLAN_ARG,
    REASON,
    Ctx,
    Decorator,
    emit,
    engine_for,
    fail,
    load,
    main,
    stacked,
    via_cluster,
    wait_option,
    with_journal,
)
from controller.cli.login import as_login
from controller.cli.recordstore import STORE, archived_report, named_store, store_options
from controller.console import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_WAITING,
    CliError,
)
from controller.failback import revert_steps
from controller.journal import Journal, Run
from controller.loop import Engine
from controller.model import Phase
from controller.plan import Step
from controller.steps import StepContext, step_kind


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
            if d["action"] == "revert":
                before = engine.journal.step(of["run"], of["step"]).evidence.get("before")
                change = f"restore the original saved before {of['step']}: {before}"
            else:  # the database's failback: its own read-only plan
                try:
                    change = step_kind(d["action"]).plan(Step.model_validate(d), ctx).summary
                except Exception as exc:
                    change = f"cannot read the current state: {exc}"
            changes.append({"name": d["name"], "action": d["action"], "change": change})
        return changes
    out = []
    for step in steps:
        try:
            change = step_kind(step.action).plan(step, ctx).summary
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
    plan_file, namespace = via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        sys.exit(remote.request(plan_file, namespace, kubeconfig, kind=kind, reason=reason,
                                actor=actor or obj.settings.actor, claimed=actor is not None,
                                level=level, yes=yes, dry_run=dry_run, output=output,
                                wait=wait))
    plan = load(plan_file)
    journal = obj.journal()
    engine = engine_for(obj, plan)
    who = as_login(engine, actor, does=f"request a {kind}", refused="request-refused",
                   instead=f"ask {actor} to request it")
    refusal = engine.refusal(kind)
    if refusal is not None:
        fail(f"{kind} of {plan.name} refused: {refusal}", EXIT_INPUT)
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
                    fail(f"request {request_id} not picked up within {wait:.0f} s",
                          EXIT_WAITING)
                time.sleep(0.2)
        if output == "text":
            click.echo(f"{kind} of {plan.name} requested by {who}: run {run_id}")
        code = _follow(journal, run_id, engine=engine, output=output,
                       timeout=max(deadline - time.monotonic(), 0), plan_file=plan_file)
    finally:
        engine.release()
    sys.exit(code)


def _as_option(does: str) -> Decorator:
    """`--as` of a command that acts: a plan file acts as the login, fop/NAME as the
    name the cluster authenticated."""
    return click.option("--as", "actor", help=f"who {does}: on a plan file only your own "
                        "login (the default; another name is refused); fop/NAME: the name "
                        "the annotation claims (default: the one the cluster knows you by)")


REQUEST = stacked(PLAN_ARG, REASON, _as_option("requests it"), wait_option())


@main.command()
@REQUEST
@click.option("--level", type=click.IntRange(1, 4), default=None,
              help="response level for notices (1 most severe); default none: a planned "
                   "failover is no incident, and its notices go to every rule")
@CONFIRM
@JOURNAL_OR_CLUSTER
def failover(obj: Ctx, plan_file: str, reason: str, actor: str | None, wait: float,
             level: int | None, yes: bool, dry_run: bool, namespace: str | None,
             kubeconfig: str | None, output: str) -> None:
    """Preview, confirm, then request a controlled failover and follow it live.

    A plan file: drives the run itself when no controller is running, otherwise follows
    its progress. fop/NAME: asks the operator in the cluster and follows the status."""
    _request(obj, plan_file, "failover", reason, actor, output, wait, level, yes=yes,
             dry_run=dry_run, namespace=namespace, kubeconfig=kubeconfig)


@main.command()
@REQUEST
@CONFIRM
@JOURNAL_OR_CLUSTER
def failback(obj: Ctx, plan_file: str, reason: str, actor: str | None, wait: float,
             yes: bool, dry_run: bool, namespace: str | None, kubeconfig: str | None,
             output: str) -> None:
    """Revert traffic and DNS to exactly what they were before the failover (reverse order)."""
    _request(obj, plan_file, "failback", reason, actor, output, wait, yes=yes, dry_run=dry_run,
             namespace=namespace, kubeconfig=kubeconfig)


@main.command()
@click.argument("plan_file", type=click.Path())
@JOURNAL
def ready(obj: Ctx, plan_file: str, output: str) -> None:
    """Pre-flight: is the backup site ready to take over? (exit 1 if any check fails)"""
    engine = Engine(load(plan_file), obj.journal(), lease_ttl=obj.settings.lease_ttl)
    result = engine.check_readiness()

    def text() -> str:
        lines = [f"backup site readiness of {engine.plan.name}: {result['score']:g} %"]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}"
                  for c in result["checks"]]
        return "\n".join(lines)

    emit(output, result, text)
    sys.exit(EXIT_OK if not result["failed"] else EXIT_FAILED)


@main.command()
@click.argument("run_id")
@click.option("--plan", "plan_file", metavar="PLAN|fop/NAME", required=True,
              type=click.Path(),
              help="the plan file of the run, or fop/NAME (checks the approver list)")
@click.option("--step", default="", help="approve one gated step instead of the whole run")
@click.option("--signature", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="plan file: your SSH signature of this approval (ssh-keygen -Y sign), "
                   "checked against the plan's approval.allowedSigners")
@click.option("--as", "actor",
              help="plan file: with --signature, which signer of the key approves (without "
                   "one you approve as your login); fop/NAME: the name the annotation "
                   "claims (default: the one the cluster knows you by)")
@wait_option()
@JOURNAL_OR_CLUSTER
def approve(obj: Ctx, run_id: str, plan_file: str, step: str, signature: Path | None,
            actor: str | None, wait: float, namespace: str | None, kubeconfig: str | None,
            output: str) -> None:
    """Approve a run (or one gated step) and follow it as it continues."""
    plan_file, namespace = via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        if signature is not None:
            fail("--signature is for plans no operator acts on: in a cluster (fop/NAME, or "
                 "spec.coordination.kind: kubernetes) the API server proves who you are; "
                 "leave it out", EXIT_INPUT)
        sys.exit(remote.approve(plan_file, namespace, kubeconfig, run_id=run_id, step=step,
                                actor=actor or obj.settings.actor, claimed=actor is not None,
                                wait=wait, output=output))
    plan = load(plan_file)
    journal = obj.journal()
    run = journal.run(run_id)
    if run is None or run.plan != plan.name:
        fail(f"no run {run_id!r} of plan {plan.name} in {journal.path}", EXIT_INPUT)
    engine = engine_for(obj, plan)
    try:
        if signature is not None:
            who = engine.people.approve_signed(run_id, signature, step=step, claimed=actor)
        else:
            how = (f"have {actor} sign it ({signing.how_to_sign(plan.name, run_id, step)}) "
                   "and approve with --signature approval.sig"
                   if plan.spec.approval.allowed_signers else f"ask {actor} to approve")
            who = as_login(engine, actor, does="approve", refused="approval-refused",
                           run_id=run_id, instead=how)
            engine.approve(run_id, actor=who, step=step)
    except PermissionError as exc:
        fail(str(exc), EXIT_INPUT)
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
@click.option("--plan", "plan_file", metavar="PLAN|fop/NAME", required=True,
              type=click.Path(), help="the plan file of the run, or fop/NAME")
@_as_option("finished it")
@wait_option(120.0, "with fop/NAME: seconds to wait for the operator to record it")
@JOURNAL_OR_CLUSTER
def done(obj: Ctx, run_id: str, step: str, plan_file: str, actor: str | None, wait: float,
         namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """Record that a person finished a human step (acknowledged, escalated, analysed...)."""
    plan_file, namespace = via_cluster(plan_file, namespace)
    if remote.is_resource(plan_file):
        sys.exit(remote.done(plan_file, namespace, kubeconfig, run_id=run_id, step=step,
                             actor=actor or obj.settings.actor, claimed=actor is not None,
                             wait=wait, output=output))
    plan = load(plan_file)
    engine = engine_for(obj, plan)
    try:
        who = as_login(engine, actor, does=f"say {step} is done", refused="done-refused",
                       run_id=run_id, instead=f"ask {actor} to say it is done")
        rec = engine.done(run_id, step, actor=who)
    except LookupError as exc:
        fail(str(exc), EXIT_INPUT)
    engine.reconcile()  # a blocking human step lets the run go on at once
    engine.release()
    emit(output, rec.to_json(), lambda: console.step_line(rec.to_json()) + f"  by {who}")


@main.command()
@click.argument("plan_file", metavar="[PLAN|fop/NAME]", required=False, type=click.Path())
@JOURNAL_OR_CLUSTER
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
        name = load(plan_file).name
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

    emit(output, data, lambda: console.status_text(data)
          or f"no plans recorded in {journal.path}")


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Choice(["text", "json", "junit", "markdown"]),
              default="text", show_default=True,
              help="output format (text is the Markdown; junit: JUnit XML for CI)")
@click.option("--plan", "plan_file", metavar="PLAN|fop/NAME",
              help="a run the journal no longer has: read it from this plan's records "
                   "store (spec.records)")
@store_options("a run the journal no longer has: read it from this records store (any "
               "plan's runs)")
@remote.options
@click.pass_obj
@with_journal
def report(obj: Ctx, run_id: str, output: str, plan_file: str | None, store_at: str | None,
           endpoint_url: str | None, region: str | None, ca_bundle: str | None,
           namespace: str | None, kubeconfig: str | None) -> None:
    """A run's steps against their time targets (JSON, JUnit XML for CI, Markdown), from
    the journal, or for a run it no longer has, from a records store (--plan or --store)."""
    if plan_file is not None and store_at is not None:
        raise CliError(f"give --plan PLAN or {STORE}, not both", EXIT_INPUT)
    store = named_store(store_at, endpoint_url=endpoint_url, region=region,
                        ca_bundle=ca_bundle)
    try:
        rep = reports.build(obj.journal(), run_id)
    except reports.UnknownRun as exc:
        rep = archived_report(run_id, str(exc), plan=plan_file, store=store,
                              namespace=namespace, kubeconfig=kubeconfig)
    render = {"json": reports.to_json, "junit": reports.to_junit,
              "markdown": reports.to_markdown, "text": reports.to_markdown}[output]
    click.echo(render(rep))

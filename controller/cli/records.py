"""`failoverctl history`: past runs and drills of a plan, read from its records store, or of
every plan a store named with `--store` keeps (reached through
`controller.cli.recordstore`); `failoverctl prune`: the journal's old runs removed once
they are archived there.

Exit codes: 0 done; 1 the store failed or a record is damaged (the others are still
listed, each damaged one named); 2 bad input.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

import click

from controller import remote
from controller.cli.base import OUTPUT, Ctx, emit, fail, main, with_journal
from controller.cli.recordstore import STORE, named_store, store_of, store_options
from controller.console import EXIT_FAILED, EXIT_INPUT, CliError
from controller.records import history as records
from controller.records.store import RecordsError
from controller.schema import format_duration, parse_duration


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at)) if at else "-"


def _run_line(e: records.RunEntry, *, plan: bool) -> str:
    run, total = e.run, e.summary.get("totalSeconds")
    took = format_duration(round(total)) if total is not None else "-"
    of = f"{run.get('plan', '?')}  " if plan else ""
    return (f"  {_when(run.get('startedAt'))}  {of}{run.get('kind', '?'):<9} "
            f"{run.get('phase', '?'):<12} level {run.get('level') or '-'}  {took:>7}  "
            f"{run.get('id')}  {run.get('outcome') or ''}")


def _drill_line(d: records.DrillEntry, *, plan: bool) -> str:
    said = "PASSED" if d.passed else "FAILED: " + ", ".join(d.failed_checks)
    of = f"{d.plan}  " if plan else ""
    return f"  {_when(d.at)}  {of}{said}" + (f"  (scenario {d.scenario})" if d.scenario else "")


@main.command()
@click.argument("plan_file", metavar="[PLAN|fop/NAME]", type=click.Path(), required=False)
@store_options("instead of a PLAN: read this records store, every plan's records")
@click.option("--since", metavar="DURATION", default="30d", show_default=True,
              help="the runs started this long ago or later, e.g. 12h, 7d, 180d")
@click.option("--drills", "with_drills", is_flag=True,
              help="also list the drills: passed or failed, when")
@remote.options
@OUTPUT
@click.pass_obj
def history(obj: Ctx, plan_file: str | None, store_at: str | None, endpoint_url: str | None,
            region: str | None, ca_bundle: str | None, since: str, with_drills: bool,
            namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """Past runs (and drills) of a plan, from its records store (spec.records); with
    --store instead of a PLAN, those of every plan the store keeps."""
    try:
        window = parse_duration(since)
    except ValueError as exc:
        fail(f"--since: {exc}", EXIT_INPUT)
    if (plan_file is None) == (store_at is None):
        fail("give a PLAN (a plan file or fop/NAME: its records store, spec.records) or "
             f"{STORE} (every plan's records)" + (", not both" if plan_file else ""),
             EXIT_INPUT)
    try:
        named = named_store(store_at, endpoint_url=endpoint_url, region=region,
                            ca_bundle=ca_bundle)
        if named is not None:
            name, store = None, named
        else:
            plan, store = store_of(str(plan_file), namespace, kubeconfig)
            name = plan.name
        start = time.time() - window
        found = records.runs(store, name, since=start)
        if with_drills:
            records.drills(store, name, since=start, listing=found)
    except CliError as exc:
        fail(str(exc), exc.code)
    except RecordsError as exc:
        fail(str(exc), EXIT_FAILED)
    data = {"plan": name, "store": store.where, "since": start,
            "runs": [{**e.run, "summary": e.summary, "key": e.key} for e in found.runs],
            "drills": [{"plan": d.plan, "at": d.at, "passed": d.passed,
                        "failedChecks": d.failed_checks, "scenario": d.scenario,
                        "key": d.key} for d in found.drills]
            if with_drills else None,
            "damaged": found.damaged}
    of = name or "every plan"

    def text() -> str:
        lines = [f"runs of {of} since {_when(start)} ({store.where}):"]
        lines += [_run_line(e, plan=name is None) for e in found.runs] or ["  none"]
        if with_drills:
            lines += [f"drills of {of} since {_when(start)}:"]
            lines += [_drill_line(d, plan=name is None) for d in found.drills] or ["  none"]
        return "\n".join(lines)

    emit(output, data, text)
    for said in found.damaged:
        click.echo(f"error: {said}", err=True)
    if found.damaged:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--older-than", metavar="DURATION", default="30d", show_default=True,
              help="runs that finished longer ago than this, e.g. 12h, 30d")
@click.option("--force", is_flag=True,
              help="also runs never archived (the journal is their only record) and the "
                   "audit of no run")
@OUTPUT
@click.pass_obj
@with_journal
def prune(obj: Ctx, older_than: str, force: bool, output: str) -> None:
    """Remove old finished runs from the journal: only those archived to their plan's
    records store (spec.records), never a run a failback still needs."""
    try:
        window = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}", EXIT_INPUT)
    pruned = obj.journal().prune(before=time.time() - window, force=force)

    def text() -> str:
        lines = [f"removed {len(pruned.runs)} runs, {pruned.decisions} decisions and "
                 f"{pruned.audit} audit entries of no run from {obj.journal().path}"]
        if pruned.unarchived:
            lines.append(f"kept {len(pruned.unarchived)} runs never archived (add "
                         "spec.records to their plan, or --force): "
                         + ", ".join(pruned.unarchived))
        return "\n".join(lines)

    emit(output, asdict(pruned), text)

"""`failoverctl trace export RUN --plan PLAN`: a recorded incident as a trace.

The samples the controller decided on during the run's incident (`controller.sample_log`)
become a JSONL trace, labelled with what the run did when the policy started it, that
`failoverctl simulate PLAN --trace FILE` replays: so a changed trigger can be tried
against every archived incident before it is applied.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from controller.cli.base import Ctx, fail, load, main, with_journal
from controller.console import EXIT_INPUT, EXIT_OK


@main.group()
def trace() -> None:
    """Health traces: recorded incidents, for `failoverctl simulate`."""


@trace.command("export")
@click.argument("run_id")
@click.option("--plan", "plan_file", required=True, type=click.Path(),
              help="the run's plan file (how far before detection its samples reach)")
@click.option("--to", "path", type=click.Path(dir_okay=False),
              help="write the trace to this file (default: standard output)")
@click.pass_obj
@with_journal
def export(obj: Ctx, run_id: str, plan_file: str, path: str | None) -> None:
    """Write a run's window of recorded samples as a trace that `simulate` replays."""
    from controller.probes.trace import dumps
    from controller.sample_log import NothingRecorded
    from controller.sample_log import export as export_run

    plan = load(plan_file)
    journal = obj.journal()
    run = journal.run(run_id)
    if run is None:
        fail(f"no run {run_id!r} in {journal.path}", EXIT_INPUT)
        return
    if run.plan != plan.name:
        fail(f"run {run_id} is of plan {run.plan!r}, not {plan.name!r}; give its plan file",
             EXIT_INPUT)
    try:
        text = dumps(export_run(journal, run, plan))
    except NothingRecorded as exc:
        fail(str(exc), EXIT_INPUT)
        return
    if path is None:
        click.echo(text, nl=False)
    else:
        Path(path).write_text(text)
        click.echo(f"wrote {path}", err=True)
    sys.exit(EXIT_OK)

"""`failoverctl evaluate [PLAN] [--since 180d]`: the post-incident evaluation (response
speed, recovery efficiency, MTTR per level, RTO/RPO) of the failover runs archived in the
records store (`controller.records.evaluate`), as Markdown or JSON.

The store is the plan's (`spec.records`), or one named with `--store
DIR|s3://BUCKET/PREFIX` (without a PLAN, every plan in it), both reached as `history`
reaches them (`controller.cli.recordstore`). An archived run that cannot be read
(damaged, not JSON) is left out and named, with the reason, and the exit code is 1; the
evaluation of the others is still printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from controller import remote
from controller.cli.base import OUTPUT, emit, fail, load, main
from controller.cli.recordstore import STORE, named_store, store_of, store_options
from controller.console import EXIT_FAILED, EXIT_INPUT, CliError
from controller.records import evaluate as evaluation
from controller.records.store import RecordsError, RecordsStore, get_json
from controller.schema import parse_duration


def archived(store: RecordsStore, plan: str | None, skipped: list[dict[str, str]]
             ) -> Iterator[dict[str, Any]]:
    """The archived run documents of `plan` (every plan: None); those that cannot be read
    are added to `skipped` with why."""
    for key in store.keys(f"runs/{plan}/" if plan else "runs/"):
        if not key.endswith(".json"):
            continue
        try:
            yield get_json(store, key)
        except RecordsError as exc:
            skipped.append({"key": key, "error": str(exc)})


@main.command("evaluate")
@click.argument("plan_file", metavar="[PLAN|fop/NAME]", required=False, type=click.Path())
@store_options("the records store to read (default: the PLAN's spec.records); without a "
               "PLAN, every plan's runs")
@click.option("--since", metavar="DURATION", default="180d", show_default=True,
              help="evaluate the failovers detected this long ago or later, e.g. 30d, 365d")
@remote.options
@OUTPUT
def evaluate_cmd(plan_file: str | None, store_at: str | None, endpoint_url: str | None,
                 region: str | None, ca_bundle: str | None, since: str,
                 namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """Evaluate past failovers from the records store: response speed (detection to
    acknowledgement and to the first action), recovery efficiency (step targets met, per
    step and per level), MTTR per level against 2 h (4 h for level 1), RTO and RPO."""
    try:
        window = parse_duration(since)
    except ValueError as exc:
        fail(f"--since: {exc}", EXIT_INPUT)
    name: str | None = None
    skipped: list[dict[str, str]] = []
    try:
        named = named_store(store_at, endpoint_url=endpoint_url, region=region,
                            ca_bundle=ca_bundle)
        if named is not None:
            store: RecordsStore = named
            name = load(plan_file).name if plan_file else None
        elif plan_file:
            plan, store = store_of(plan_file, namespace, kubeconfig)
            name = plan.name
        else:
            raise CliError("give a PLAN (file or fop/NAME) whose spec.records names the "
                           f"store, or {STORE}", EXIT_INPUT)
        docs = list(archived(store, name, skipped))
    except CliError as exc:
        fail(str(exc), exc.code)
    except RecordsError as exc:
        fail(str(exc), EXIT_FAILED)
    result = {**evaluation.evaluate(docs, plan=name, since=window, now=time.time()),
              "store": store.where, "damaged": skipped}
    emit(output, result, lambda: evaluation.to_markdown(result).rstrip("\n"))
    for said in skipped:
        click.echo(f"error: left out: {said['error']}", err=True)
    if skipped:
        sys.exit(EXIT_FAILED)

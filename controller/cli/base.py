"""The `failoverctl` group and what its commands share: options, the context (settings,
journal), plan loading, output and the exit codes of `controller.console`.

Owns the process's logging: one handler that redacts secrets; the controller's own logs and
every library's (paramiko, botocore, kubernetes) stay at WARNING unless `-v`, so a
command's output is never interleaved with a library's INFO lines.
"""


from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from controller import coordination, remote
from controller.config import Settings
from controller.console import (
    EXIT_INPUT,
    EXIT_JOURNAL,
    CliError,
)
from controller.coordination import CoordinationError
from controller.journal import Journal, JournalError
from controller.loop import Engine
from controller.plan import FailoverPlan, PlanError, load_plan
from controller.secrets import RedactingFilter, Secrets

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def stacked(*decorators: Decorator) -> Decorator:
    """Several command decorators as one, applied as if written one above the other."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


def wait_option(default: float = 3600.0, help: str = "seconds to follow progress") -> Decorator:
    return click.option("--wait", default=default, show_default=True, help=help)


PLAN_ARG = click.argument("plan_file", metavar="PLAN|fop/NAME", type=click.Path())
OUTPUT = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                      show_default=True, help="output format")
REASON = click.option("--reason", required=True, help="why, for the audit trail and notices")
CONFIRM = stacked(
    click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation"),
    click.option("--dry-run", is_flag=True, help="show what would change; change nothing"))


class Ctx:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._journal: Journal | None = None

    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.settings.journal)
        return self._journal


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load(path: str) -> FailoverPlan:
    try:
        return load_plan(path)
    except PlanError as err:
        click.echo(f"{err.source}: invalid plan", err=True)
        for problem in err.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(EXIT_INPUT)


def engine_for(obj: Ctx, plan: FailoverPlan) -> Engine:
    """An engine that may act on `plan`: it holds the journal's lease and the lease of the
    coordinator the plan names (`spec.coordination`: a lock on this host by default, so
    two failoverctl processes of any user never act on one plan at once; or etcd)."""
    try:
        coordinator = coordination.for_plan(plan, secrets=Secrets())
    except CoordinationError as exc:
        fail(str(exc), EXIT_INPUT)
    return Engine(plan, obj.journal(), lease_ttl=obj.settings.lease_ttl,
                  coordinator=coordinator)


def via_cluster(plan_file: str, namespace: str | None) -> tuple[str, str | None]:
    """A plan file with `spec.coordination.kind: kubernetes` is acted on by the operator
    only: the CLI requests through its FailoverPlan resource, exactly as with fop/NAME."""
    if remote.is_resource(plan_file) or not Path(plan_file).is_file():
        return plan_file, namespace
    plan = load(plan_file)
    if plan.spec.coordination.kind != "kubernetes":
        return plan_file, namespace
    try:
        return f"fop/{plan.name}", namespace or coordination.kubernetes_namespace(plan)
    except CoordinationError as exc:
        fail(str(exc), EXIT_INPUT)
        raise


def emit(output: str, data: Any, text: Callable[[], str]) -> None:
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
    # libraries (paramiko's "Connected", botocore) stay at WARNING unless -v
    logging.basicConfig(level="INFO" if verbose else "WARNING", handlers=[handler])
    logging.getLogger("controller").setLevel("DEBUG" if verbose else settings.log_level)
    ctx.obj = Ctx(settings)
    ctx.call_on_close(lambda: ctx.obj._journal and ctx.obj._journal.close())


def with_journal(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a corrupt/unreadable journal into exit code 3 with the reason (and a CliError
    into its own code)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JournalError as exc:
            fail(str(exc), EXIT_JOURNAL)
        except CliError as exc:
            fail(str(exc), exc.code)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


JOURNAL = stacked(OUTPUT, click.pass_obj, with_journal)
"""The end of a command on this host's journal: `-o`, the context, journal errors as exit
codes."""
JOURNAL_OR_CLUSTER = stacked(remote.options, JOURNAL)
"""The same for a command whose PLAN may also be `fop/NAME` (`-n`, `--kubeconfig`)."""

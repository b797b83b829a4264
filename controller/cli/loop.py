"""`failoverctl run`: the reconcile loop in the foreground, one line per thing a cycle did
(`controller.engine.cycle`): what it decided, which run it started, what it waits for and
the command that answers it. A cycle runs every tick, and at once when a probe round may
change a decision (`probes.scheduler.News`): detection costs the probes' own interval x
consecutiveFailures, never a tick more."""


from __future__ import annotations

import sys
import time

import click

from controller.api import Health, TlsError, listening, serve
from controller.cli.base import Ctx, engine_for, fail, load, main, with_journal
from controller.console import (
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
)
from controller.engine.cycle import (
    Cycle,
    Decided,
    Ended,
    Ran,
    Refused,
    Started,
    StoodBy,
    WaitFor,
    Waiting,
)
from controller.model import DecisionAction, Phase
from controller.probes.scheduler import News
from controller.probing import observe


def _told(cycle: Cycle, where: str) -> list[str]:
    """What `run` says about one cycle: what it did and, when it did nothing else or the
    decision asks for something, the decision; a run that waits says for what."""
    phase = cycle.phase.value
    lines = []
    for event in cycle.events:
        match event:
            case Decided(decision):
                if decision.action is DecisionAction.NONE and len(cycle.events) > 1:
                    continue  # "still tripped" says nothing a waiting or running run does
                lines.append(f"{phase} — {decision.sentence}")
            case Refused(kind, why):
                lines.append(f"{phase} — {kind} refused: {why}")
            case Started(run_id, kind, origin):
                lines.append(f"{phase} — started {kind} run {run_id}: {origin.text()}")
            case Ran(run_id, step, status):
                lines.append(f"{phase} — run {run_id}: step {step} {status.value}")
            case Waiting(run_id, WaitFor.PERSON, step):
                lines.append(f"{phase} — run {run_id} waits for a person to finish step "
                             f"{step}: {event.command(where)}")
            case Waiting(run_id, WaitFor.APPROVAL, step):
                lines.append(f"{phase} — run {run_id} waits for approval of "
                             f"{'step ' + step if step else 'the run'}: "
                             f"{event.command(where)}")
            case Ended(run_id, ended, outcome):
                lines.append(f"{ended.value} — run {run_id} ended: {outcome}")
            case StoodBy(why):
                lines.append(f"{phase} — standing by: {why}")
    return lines


@main.command()
@click.argument("plans", nargs=-1, required=True, type=click.Path())
@click.option("--interval", type=float,
              help="seconds between cycles (default: $FAILOVER_TICK, else 1); a failing probe "
                   "round runs one at once")
@click.option("--ticks", type=int,
              help="stop after this many ticks (default: run forever); cycles run on news "
                   "in between do not count")
@click.option("--until", "until", type=click.Choice([p.value for p in Phase]),
              help="stop once every plan reaches this phase")
@click.option("--listen", metavar="HOST:PORT",
              help="serve /healthz, /readyz and /metrics here, e.g. 0.0.0.0:8080 (default: "
                   "not served)")
@click.option("--tls-cert", type=click.Path(dir_okay=False),
              help="serve them over HTTPS with this certificate (PEM)")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="its private key (PEM)")
@click.pass_obj
@with_journal
def run(obj: Ctx, plans: tuple[str, ...], interval: float | None, ticks: int | None,
        until: str | None, listen: str | None, tls_cert: str | None,
        tls_key: str | None) -> None:
    """The reconcile loop against plan files: probe, decide, act, record. Ctrl-C stops it."""
    try:
        where = listening(listen, tls_cert, tls_key)
    except TlsError as exc:
        fail(str(exc), EXIT_INPUT)
    loaded = [load(p) for p in plans]
    for plan in loaded:
        if plan.spec.coordination.kind == "kubernetes":
            fail(f"plan {plan.name} is acted on by the operator in the cluster "
                  "(spec.coordination.kind: kubernetes); run `failoverctl operator` there, "
                  f"or request with `failoverctl failover|failback fop/{plan.name}`",
                  EXIT_INPUT)
    journal = obj.journal()
    engines = [engine_for(obj, p) for p in loaded]
    every = interval or obj.settings.tick
    health = Health(stale_after=max(10 * every, 30.0), ready_check=lambda: journal.lease("-"))
    if where:
        host, port, tls = where
        serve(health, host, port, tls=tls)
    news = News()  # a failing round of any plan runs a cycle at once, not at the next tick
    schedulers = [observe(e.plan, e.backends, news=news) for e in engines]
    for scheduler in schedulers:
        scheduler.start()
    count, due = 0, time.monotonic() + every
    try:
        while ticks is None or count < ticks:
            news.wait(max(0.0, due - time.monotonic()))
            ticked = time.monotonic() >= due  # else news: a cycle between ticks
            for path, engine, scheduler in zip(plans, engines, schedulers, strict=True):
                for line in _told(engine.tick(scheduler.drain()), f"--plan {path}"):
                    click.echo(f"{engine.plan.name}: {line}")
            if ticked:
                count, due = count + 1, time.monotonic() + every
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

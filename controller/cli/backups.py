"""`failoverctl backup`: take the plan's backups, verify, copy off-site, prune; or print the
CronJob that does it on schedule.

Each data set of `spec.backups` runs `controller.backups.job.BackupJob` (take, verify
right after, off-site copy checked there, retention on both stores); progress goes to
stderr phase by phase, the summary to stdout (`-o json` for scripts). Every run is
audited in the journal with who triggered it, from the first phase to its outcome. With
`--due` (the schedule), a set is backed up only when due, and then its newest verified
backup is test-restored when no test restore passed within `testRestoreEvery`
(`job.run_test_restore`), audited likewise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import yaml

from controller.backups import Verifier, schedule
from controller.backups.catalog import CatalogStore
from controller.backups.job import (
    BackupJob,
    Outcome,
    Phase,
    ScheduledTestRestore,
    run_test_restore,
)
from controller.cli.base import OUTPUT, Ctx, emit, load, main, with_journal
from controller.cli.login import as_login, login_option
from controller.console import EXIT_FAILED, EXIT_OK, CliError
from controller.journal import Journal
from controller.loop import Engine
from controller.model import Backup, PermanentError
from controller.plan import BackupSet, FailoverPlan, format_duration
from controller.secrets import SecretError, redact


def _store(engine: Engine, name: str) -> CatalogStore:
    try:
        store = engine.backends.store(name)
    except (PermanentError, SecretError) as exc:
        raise CliError(f"backend {name}: {redact(str(exc))}") from None
    if not isinstance(store, CatalogStore):
        raise CliError(f"backend {name} ({engine.plan.spec.backend(name).kind}) cannot hold "
                       "backups the controller takes: use kind s3 or filesystem")
    return store


def _verifier(engine: Engine, bs: BackupSet) -> Verifier:
    try:
        return engine.backends.verifier(bs.verifier)
    except (PermanentError, SecretError) as exc:
        raise CliError(f"backend {bs.verifier}: {redact(str(exc))}") from None


def _selected(plan: FailoverPlan, plan_file: str, datasets: tuple[str, ...]
              ) -> list[BackupSet]:
    sets = plan.spec.backups
    if not sets:
        raise CliError(f"{plan_file}: spec.backups is empty; add a set per data set (source, "
                       "kind, store, offsite, verifier)")
    known = {bs.dataset for bs in sets}
    unknown = sorted(set(datasets) - known)
    if unknown:
        raise CliError(f"--dataset {', '.join(unknown)}: not in spec.backups (have: "
                       f"{', '.join(sorted(known))})")
    return [bs for bs in sets if not datasets or bs.dataset in datasets]


def _summary(outcomes: list[Outcome], tested: list[ScheduledTestRestore],
             skipped: dict[str, str]) -> str:
    done: list[Outcome | ScheduledTestRestore] = [*outcomes, *tested]
    lines = [f"{'[ok]  ' if o.ok else '[FAIL]'} {o.dataset}: {o.sentence()}" for o in done]
    lines += [f"[skip] {ds}: not due: {why}" for ds, why in skipped.items()]
    return "\n".join(lines) or "nothing to do"


@main.command("backup")
@click.argument("plan_file", type=click.Path())
@click.option("--dataset", "datasets", multiple=True,
              help="data set to back up (repeatable; default: every set of spec.backups)")
@click.option("--due", "only_due", is_flag=True,
              help="only the sets whose newest verified backup is `every` old, and a test "
                   "restore where none passed within `testRestoreEvery` (the schedule)")
@click.option("--cronjob", is_flag=True,
              help="print the ConfigMap and CronJob that run `backup --due` in the cluster")
@click.option("--image", default="ghcr.io/example/failover-controller:0.1.0",
              show_default=True, help="--cronjob: the controller's image")
@click.option("--namespace", default="failover-system", show_default=True,
              help="--cronjob: where the CronJob runs")
@login_option("runs it")
@OUTPUT
@click.pass_obj
@with_journal
def backup_cmd(obj: Ctx, plan_file: str, datasets: tuple[str, ...], only_due: bool,
               cronjob: bool, image: str, namespace: str, actor: str | None,
               output: str) -> None:
    """Take the backups spec.backups names: verify each right after, copy it off-site and
    check it there, prune by retention. With --due, only the sets due, then a test restore
    of a set's newest verified backup when none passed within its testRestoreEvery. Exit 1
    if a set or a test restore failed (the backup is marked failed, never restored), 2 on
    bad input."""
    plan = load(plan_file)
    sets = _selected(plan, plan_file, datasets)
    if cronjob:
        docs = schedule.cronjob(plan, Path(plan_file).read_text(), image=image,
                                namespace=namespace)
        click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
        return
    journal = obj.journal()
    engine = Engine(plan, journal, lease_ttl=obj.settings.lease_ttl)
    who = as_login(engine, actor, does="take backups", refused="backup-refused",
                   instead=f"ask {actor} to run it")
    jobs = [(bs, _store(engine, bs.store), _store(engine, bs.offsite), _verifier(engine, bs))
            for bs in sets]  # every backend built first: bad input stops before any backup
    outcomes: list[Outcome] = []
    tested: list[ScheduledTestRestore] = []
    skipped: dict[str, str] = {}
    for bs, store, offsite, verifier in jobs:
        if not only_due:
            outcomes.append(_backup(journal, plan, bs, store, offsite, verifier, who))
            continue
        try:
            why = schedule.due(bs, store.list(dataset=bs.dataset), time.time())
        except Exception as exc:
            outcomes.append(_unlisted(bs, exc))
            continue
        if why is None:
            skipped[bs.dataset] = (f"its newest verified backup is younger than every "
                                   f"{format_duration(bs.every)}")
        else:
            click.echo(f"{bs.dataset}: due: {why}", err=True)
            outcomes.append(_backup(journal, plan, bs, store, offsite, verifier, who))
        try:  # listed again: the new backup's own verification may have test-restored it
            test = schedule.due_test_restore(bs, store.list(dataset=bs.dataset), time.time())
        except Exception as exc:
            outcomes.append(_unlisted(bs, exc))
            continue
        if test is not None:
            tested.append(_test_restore(journal, plan, bs, verifier, who, *test))
    emit(output, {"plan": plan.name, "results": [o.to_json() for o in outcomes],
                  "testRestores": [t.to_json() for t in tested], "skipped": skipped},
         lambda: _summary(outcomes, tested, skipped))
    sys.exit(EXIT_OK if all(o.ok for o in outcomes) and all(t.ok for t in tested)
             else EXIT_FAILED)


def _unlisted(bs: BackupSet, exc: Exception) -> Outcome:
    """Listing the store failed: said as the set's failure, the other sets go on."""
    return Outcome(bs.dataset, failed=Phase.PREFLIGHT, error=redact(
        f"cannot list the backups in {bs.store}: {type(exc).__name__}: {exc}"))


def _backup(journal: Journal, plan: FailoverPlan, bs: BackupSet, store: CatalogStore,
            offsite: CatalogStore, verifier: Verifier, who: str) -> Outcome:
    def progress(phase: Phase, text: str) -> None:
        click.echo(f"{bs.dataset}: {phase.value}: {text}", err=True)

    journal.audit(at=time.time(), actor=who, action="backup-start", plan=plan.name,
                  detail=f"{bs.dataset} ({bs.kind}) into {bs.store}, off-site {bs.offsite}")
    outcome = BackupJob(bs, store=store, offsite=offsite, verifier=verifier, actor=who,
                        progress=progress).run()
    journal.audit(at=time.time(), actor=who, plan=plan.name,
                  action="backup-done" if outcome.ok else "backup-failed",
                  detail=f"{bs.dataset}: {outcome.sentence()}")
    return outcome


def _test_restore(journal: Journal, plan: FailoverPlan, bs: BackupSet, verifier: Verifier,
                  who: str, backup: Backup, why: str) -> ScheduledTestRestore:
    click.echo(f"{bs.dataset}: test restore due: {why}; testing {backup.id}", err=True)
    journal.audit(at=time.time(), actor=who, action="test-restore-start", plan=plan.name,
                  detail=f"{bs.dataset}: {backup.id} with verifier {bs.verifier} ({why})")
    done = run_test_restore(bs, backup, why, verifier=verifier, actor=who)
    click.echo(f"{bs.dataset}: {done.sentence()}", err=True)
    journal.audit(at=time.time(), actor=who, plan=plan.name,
                  action="test-restore-done" if done.ok else "test-restore-failed",
                  detail=f"{bs.dataset}: {done.sentence()}")
    return done

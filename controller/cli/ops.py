"""`failoverctl dns-prepare | verify | operator | drill`: the commands that work beside the
run loop — DNS TTL preparation, backup verification, the Kubernetes operator and drills."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from controller import remote
from controller.api import Health, TlsError, listening, serve
from controller.cli.base import (
    JOURNAL,
    JOURNAL_OR_CLUSTER,
    Ctx,
    emit,
    fail,
    load,
    main,
    wait_option,
    with_journal,
)
from controller.cli.login import as_login, claim, login_option
from controller.console import EXIT_FAILED, EXIT_INPUT, EXIT_OK
from controller.crd import PLURAL
from controller.loop import Engine, default_holder
from controller.model import PermanentError
from controller.plan import DnsParams
from controller.secrets import SecretError, redact
from controller.steps.restore import RestoreParams


@main.command("dns-prepare")
@click.argument("plan_file", type=click.Path())
@click.option("--ttl", type=click.IntRange(0), help="lower to this TTL (seconds) instead "
              "of each DNS step's params.prepareTtl")
@click.option("--dry-run", is_flag=True, help="show which TTLs would be lowered; change nothing")
@login_option("lowers them")
@JOURNAL
def dns_prepare(obj: Ctx, plan_file: str, ttl: int | None, dry_run: bool, actor: str | None,
                output: str) -> None:
    """Lower the TTL of the plan's DNS records ahead of a failover (values unchanged;
    compare-and-swap; never raises a TTL; audited). Exit 1 if a write failed."""
    from controller.dns import ttl as ttls

    plan = load(plan_file)
    journal = obj.journal()
    engine = Engine(plan, journal, lease_ttl=obj.settings.lease_ttl)
    who = as_login(engine, actor, does="lower the TTLs", refused="dns-prepare-refused",
                   instead=f"ask {actor} to run it")
    steps = [s for s in plan.spec.steps if isinstance(s.args, DnsParams)]
    if not any(ttls.wanted_ttl(s, ttl) is not None for s in steps):
        fail(f"{plan_file}: no DNS step sets params.prepareTtl; pass --ttl SECONDS",
              EXIT_INPUT)
    journal.audit(at=time.time(), actor=who, action="dns-prepare", plan=plan.name,
                  detail=f"{'dry run' if dry_run else 'start'}"
                         f"{f', ttl {ttl}' if ttl is not None else ''}")

    def audit(detail: str) -> None:
        journal.audit(at=time.time(), actor=who, action="dns-ttl-lowered", plan=plan.name,
                      detail=detail)

    try:
        results = ttls.prepare(plan, engine.backends.dns, ttl=ttl, dry_run=dry_run,
                               audit=audit)
    except Exception as exc:
        journal.audit(at=time.time(), actor=who, action="dns-prepare-failed",
                      plan=plan.name, detail=str(exc))
        fail(f"{type(exc).__name__}: {exc}" if not isinstance(exc, PermanentError)
              else str(exc), EXIT_FAILED)

    def text() -> str:
        lines = []
        for r in results:
            what = {"lowered": f"ttl {r['ttl']} -> {r['wanted']}"
                    + (f" (the old TTL has expired everywhere by {r['effectiveEverywhereBy']})"
                       if r.get("effectiveEverywhereBy") else ""),
                    "would-lower": f"ttl {r['ttl']} -> {r['wanted']} (dry run)",
                    "unchanged": f"ttl {r['ttl']} already <= {r['wanted']}",
                    "absent": "no such record"}[r["action"]]
            lines.append(f"{r['step']}: {r['name']} {r['type']}: {what}")
        return "\n".join(lines) or "no DNS records to prepare"

    emit(output, results, text)


@main.command("verify")
@click.argument("plan_file", type=click.Path())
@click.option("--dataset", "datasets", multiple=True,
              help="data set to verify (default: every data set a restore step names)")
@login_option("verifies")
@JOURNAL
def verify_cmd(obj: Ctx, plan_file: str, datasets: tuple[str, ...], actor: str | None,
               output: str) -> None:
    """Verify every backup not verified yet (checksums, decrypt, manifest, test restore).

    Exit 1 if a verification failed (or a backup could not be checked: the store failed),
    2 on bad input: no verifier, or a backup that this configuration cannot verify (e.g. an
    unreadable encryption key; nothing is recorded for it). Every backup is tried."""
    plan = load(plan_file)
    engine = Engine(plan, obj.journal(), lease_ttl=obj.settings.lease_ttl)
    who = as_login(engine, actor, does="verify backups", refused="verify-refused",
                   instead=f"ask {actor} to run it")
    verifiers = [b.name for b in plan.spec.backends if b.role == "verifier"]
    if not verifiers:
        fail(f"{plan_file}: spec.backends has no backend with role: verifier; add one "
              "(kind: catalog) naming the backup store", EXIT_INPUT)
    wanted = list(datasets) or sorted({s.args.dataset for s in plan.spec.steps
                                       if isinstance(s.args, RestoreParams)})
    if not wanted:
        fail(f"{plan_file}: no restore step names a data set; pass --dataset", EXIT_INPUT)
    results: list[dict[str, Any]] = []
    for name in verifiers:
        try:
            verifier = engine.backends.verifier(name)
        except (PermanentError, SecretError) as exc:  # e.g. the store's credentials
            fail(f"backend {name}: {redact(str(exc))}", EXIT_INPUT)
        for ds in wanted:
            try:
                found = verifier.verify_unverified(dataset=ds, actor=who)
            except Exception as exc:  # listing the store failed: say so, no traceback
                fail(f"backend {name}: cannot list the backups of {ds}: "
                      f"{redact(f'{type(exc).__name__}: {exc}')}", EXIT_FAILED)
            results += [{"verifier": name, "dataset": ds, **r} for r in found]

    def text() -> str:
        if not results:
            return f"nothing to verify: every backup of {', '.join(wanted)} is verified already"
        return "\n".join(
            f"[{'ok' if r['passed'] else 'ERROR' if r.get('badInput') else 'FAIL'}] "
            f"{r['dataset']} {r['backup']}: {r['summary']} ({r['durationS']:g} s)"
            for r in results)

    emit(output, results, text)
    sys.exit(EXIT_INPUT if any(r.get("badInput") for r in results) else
             EXIT_OK if all(r["passed"] for r in results) else EXIT_FAILED)


@main.command("operator")
@click.option("--namespace", envvar="POD_NAMESPACE", required=True,
              help="namespace of the FailoverPlans and the leader Lease ($POD_NAMESPACE)")
@click.option("--kubeconfig", type=click.Path(dir_okay=False),
              help="kubeconfig file (default: in-cluster in a pod, else $KUBECONFIG)")
@click.option("--identity", envvar="FAILOVER_ACTOR",
              help="this replica's name in the Lease and audit (default: $FAILOVER_ACTOR, "
                   "else HOSTNAME-PID)")
@click.option("--listen", metavar="HOST:PORT",
              help="serve /healthz, /readyz and /metrics here (default: not served)")
@click.option("--tls-cert", type=click.Path(dir_okay=False),
              help="serve them over HTTPS with this certificate (PEM)")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="its private key (PEM)")
@click.option("--lease-duration", type=float, default=15.0, show_default=True,
              help="seconds the leader Lease holds without renewal before another replica "
                   "may take it")
@click.option("--renew-deadline", type=float, default=10.0, show_default=True,
              help="seconds the leader keeps failing to renew before it stops leading "
                   "(less than --lease-duration)")
@click.option("--retry-period", type=float, default=2.0, show_default=True,
              help="seconds between tries to take or renew the Lease (less than "
                   "--renew-deadline)")
@click.option("--resync", type=float, default=300.0, show_default=True,
              help="seconds between full relists of the FailoverPlans")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="plans reconciled at once (one plan never by two workers)")
@click.option("--shard", metavar="N/M",
              help="reconcile only shard N of M (from 0), on that shard's own Lease: plans "
                   "labelled failover.example.io/shard=N, the others by a hash of their "
                   "name")
@click.option("--shard-selector", metavar="KEY=VALUE|!KEY",
              help="reconcile only the plans with this label (or, with !KEY, without it), "
                   "on that shard's own Lease")
@click.pass_obj
@with_journal
def operator_cmd(obj: Ctx, namespace: str, kubeconfig: str | None, identity: str | None,
                 listen: str | None, tls_cert: str | None, tls_key: str | None,
                 lease_duration: float, renew_deadline: float,
                 retry_period: float, resync: float, workers: int, shard: str | None,
                 shard_selector: str | None) -> None:
    """Run in the cluster: watch FailoverPlans, elect a leader, reconcile, write status."""
    import signal
    import threading

    from controller.kube import KubeConnection, KubeError, connect
    from controller.operator import LeaderConfig, Operator
    from controller.sharding import Shard, ShardError, parse_selector, parse_shard

    try:
        where = listening(listen, tls_cert, tls_key)
    except TlsError as exc:
        fail(str(exc), EXIT_INPUT)
    if not 0 < retry_period < renew_deadline < lease_duration:
        fail("leader election needs 0 < --retry-period < --renew-deadline < "
              "--lease-duration (defaults 2 < 10 < 15)", EXIT_INPUT)
    if shard and shard_selector:
        fail("--shard and --shard-selector both say which plans this replica takes: give "
             "one", EXIT_INPUT)
    try:
        taken: Shard | None = (parse_shard(shard) if shard else
                               parse_selector(shard_selector) if shard_selector else None)
    except ShardError as exc:
        fail(str(exc), EXIT_INPUT)
    try:
        kube = connect(KubeConnection(kubeconfig=kubeconfig))
    except (KubeError, PermanentError) as exc:
        fail(str(exc), EXIT_INPUT)
    every = obj.settings.tick
    health = Health(stale_after=max(10 * every, 30.0), ready_check=lambda: op.require_synced())
    op = Operator(kube, namespace=namespace, journal=obj.journal(),
                  identity=identity or default_holder(),
                  leader=LeaderConfig(lease_duration=lease_duration,
                                      renew_deadline=renew_deadline, retry_period=retry_period),
                  tick=every, resync=resync, workers=workers, beat=health.beat, shard=taken)
    if where:
        host, port, tls = where
        serve(health, host, port, tls=tls)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"operator {op.identity}: watching {namespace}/{PLURAL}"
               + (f", shard {taken.name} (lease {op.elector.config.lease_name})" if taken
                  else ""))
    op.run(stop)
    click.echo("operator stopped; the lease is released and the journal holds every step")


@main.command()
@click.argument("plan_file", metavar="SCENARIO|PLAN|fop/NAME", type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="drill-report",
              show_default=True, help="directory for the reports (HTML, Markdown, JSON, JUnit)")
@click.option("--sandbox-dir", type=click.Path(file_okay=False),
              help="scenarios: keep the sandbox's files (configs, logs, secrets) here; "
                   "its servers are stopped all the same")
@click.option("--as", "actor",
              help="who runs it, for the audit: with a PLAN file only your own login "
                   "(the default; another name is refused and audited); with fop/NAME, the "
                   "name the annotation claims (default: the one the cluster knows you by); "
                   "a SCENARIO does not use it")
@wait_option(help="fop/NAME: seconds to follow each run")
@JOURNAL_OR_CLUSTER
def drill(obj: Ctx, plan_file: str, out_dir: str, sandbox_dir: str | None, actor: str | None,
          wait: float, namespace: str | None, kubeconfig: str | None, output: str) -> None:
    """A whole drill: inject a fault, let the loop fail over, verify, fail back, report.

    A SCENARIO (`kind: DrillScenario`: a file, or a name in manifests/drills/) runs in
    the sandbox of real services, torn down after. A PLAN file runs against its own
    backends: with the in-memory ones (manifests/examples/memory-drill.yaml) it injects an
    outage; with real ones it causes none — a planned failover, then a failback that runs
    whatever happened: a failed step, SIGINT, SIGTERM or SIGHUP (exit 130, 143, 129, after
    the failback; a second signal is ignored until it is done); what could not be put
    back is said. `fop/NAME` does the same through the operator; a request the operator
    has not claimed when the drill is stopped or `--wait` runs out is withdrawn.
    """
    from controller.drill import scenario as scenarios
    from controller.drill.runner import run_plan_for_cli

    if remote.is_resource(plan_file):
        sys.exit(remote.drill(plan_file, namespace, kubeconfig,
                              actor=actor or obj.settings.actor, claimed=actor is not None,
                              output=output, wait=wait))
    echo = None if output == "json" else click.echo
    path = scenarios.find(plan_file)
    if scenarios.document_kind(path) == "DrillScenario":
        verdict = scenarios.run_for_cli(path, obj.journal(), Path(out_dir), echo=echo,
                                        sandbox_dir=Path(sandbox_dir) if sandbox_dir else None)
    else:
        plan, journal = load(plan_file), obj.journal()
        who = claim(journal, plan.name, actor, at=time.time(), does="run a drill",
                    refused="drill-refused", instead=f"ask {actor} to run it")
        verdict = run_plan_for_cli(plan, journal, Path(out_dir), echo=echo, actor=who)
    if output == "json":
        click.echo(json.dumps(verdict, indent=2, sort_keys=True, default=str))
    sys.exit(EXIT_OK if verdict["passed"] else EXIT_FAILED)

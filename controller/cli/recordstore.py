"""How the CLI reaches a records store, for `history` and for `report RUN` when the
journal no longer has the run.

A plan's store (`spec.records`, `--plan PLAN`): from a plan file, or from the FailoverPlan
`fop/NAME` names (its Secrets read with the caller's own Kubernetes access). A store the
CLI cannot reach from here — a directory store lives on the controller's host, the
operator's in its pod — is said, with the command that reads it there. Or a store named
directly (`--store DIR|s3://BUCKET/PREFIX`, every plan's records; `store_options`), its S3
credentials from the default AWS chain (`AWS_ACCESS_KEY_ID`, a profile, an instance role).
Not a command module: `records` and `runs` both use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from controller import remote
from controller.cli.base import Decorator, load, stacked
from controller.console import EXIT_FAILED, EXIT_INPUT, CliError
from controller.kube import KubeError
from controller.plan import FailoverPlan
from controller.plan_records import DirectoryRecordsOptions, S3RecordsOptions
from controller.records import history
from controller.records.store import (
    DirectoryStore,
    RecordMissing,
    RecordsError,
    RecordsStore,
    S3Store,
    open_store,
)
from controller.secrets import SecretError, Secrets


def _plan(ref: str, namespace: str | None, kubeconfig: str | None
          ) -> tuple[FailoverPlan, Secrets, str]:
    """The plan `ref` names, the Secrets its store's credentials are read with (those of
    the controller's engine for a plan file), and where its records can be read."""
    if not remote.is_resource(ref):
        return load(ref), Secrets(), f"on the host the controller runs on (`failoverctl " \
                                     f"history {ref}` there)"
    try:
        res = remote.connect(ref, namespace, kubeconfig)
        plan = res.plan(res.get())
    except KubeError as exc:
        raise CliError(f"cannot read {ref}: {exc}", EXIT_FAILED) from None
    secrets = Secrets(kube_reader=lambda key: res.kube.read_secret(
        key.namespace or res.namespace, key.name, key.key))
    return plan, secrets, (f"in the operator's pod (`kubectl exec -n failover-system "
                           f"deploy/failover-controller -- failoverctl history {ref} -n "
                           f"{res.namespace}`)")


def store_of(ref: str, namespace: str | None, kubeconfig: str | None
             ) -> tuple[FailoverPlan, RecordsStore]:
    """The plan and its records store, reachable from here (CliError saying why not)."""
    plan, secrets, there = _plan(ref, namespace, kubeconfig)
    spec = plan.spec.records
    if spec is None:
        raise CliError(f"plan {plan.name} keeps no records: add spec.records (a directory "
                       "or an S3 bucket, and `keep`) so finished runs are archived",
                       EXIT_INPUT)
    if spec.store.kind == "directory" and not Path(spec.store.directory().path).is_dir():
        raise CliError(
            f"plan {plan.name} keeps its records in directory {spec.store.directory().path}, "
            f"which is not on this host: read them {there}, or keep them in an S3 store "
            "this host can reach", EXIT_FAILED)
    try:
        return plan, open_store(spec, secrets=secrets)
    except (SecretError, KubeError) as exc:
        raise CliError(f"cannot open the records store of {plan.name}: {exc}",
                       EXIT_FAILED) from None


STORE = "--store DIR|s3://BUCKET/PREFIX"


def store_options(what: str) -> Decorator:
    """`--store` and the S3 options that go with it; `what` says what it is read for."""
    return stacked(
        click.option("--store", "store_at", metavar="DIR|s3://BUCKET/PREFIX",
                     help=f"{what}; S3 credentials: the default AWS chain "
                          "($AWS_ACCESS_KEY_ID, a profile, an instance role)"),
        click.option("--endpoint-url", metavar="URL",
                     help="with --store s3://: the S3 endpoint (default: AWS's)"),
        click.option("--region", help="with --store s3://: the bucket's region (default: "
                                      "us-east-1)"),
        click.option("--ca-bundle", type=click.Path(dir_okay=False),
                     help="with --store s3://: PEM file of the CAs its TLS certificate is "
                          "checked against (default: the system's)"))


def named_store(where: str | None, *, endpoint_url: str | None, region: str | None,
                ca_bundle: str | None) -> RecordsStore | None:
    """The store `--store` names: an existing directory, or s3://BUCKET[/PREFIX]; None
    without --store."""
    if where is None or not where.startswith("s3://"):
        if endpoint_url or region or ca_bundle:
            raise CliError("--endpoint-url, --region and --ca-bundle are for an S3 store: "
                           "add --store s3://BUCKET/PREFIX", EXIT_INPUT)
        if where is None:
            return None
        if not Path(where).is_dir():
            raise CliError(f"--store {where}: no such directory on this host; give the "
                           "directory of a records store, or s3://BUCKET/PREFIX", EXIT_INPUT)
        return DirectoryStore(DirectoryRecordsOptions(path=where))
    bucket, _, prefix = where.removeprefix("s3://").partition("/")
    try:
        options = S3RecordsOptions.model_validate(
            {"bucket": bucket, "prefix": prefix, "endpointUrl": endpoint_url,
             "caBundle": ca_bundle, "objectLock": None, **({"region": region} if region else {})})
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(f"--store {where}: {said} (give s3://BUCKET/PREFIX)",
                       EXIT_INPUT) from None
    try:
        return S3Store(options, keep=0.0)  # read only: the retention is the writer's
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise CliError(f"--endpoint-url: {exc}", EXIT_INPUT) from None


def archived_report(run_id: str, unknown: str, *, plan: str | None,
                    store: RecordsStore | None, namespace: str | None = None,
                    kubeconfig: str | None = None) -> dict[str, Any]:
    """The archived report of `run_id`, which the journal does not have (`unknown` says
    so), from the records store of plan `plan` or from `store` (at most one given); a
    CliError saying which option to give when neither has it."""
    if store is not None:
        where = store.where
    elif plan is not None:
        owner, store = store_of(plan, namespace, kubeconfig)
        where = f"the records store of plan {owner.name} ({store.where})"
    else:
        raise CliError(f"{unknown}; a run archived in a records store: add --plan PLAN "
                       f"(the store of the plan that ran it, spec.records) or {STORE} "
                       "(a records store: every plan's runs)", EXIT_INPUT)
    try:
        return history.find_run(store, run_id)
    except RecordMissing:
        raise CliError(
            f"{unknown}, nor in {where}: give the store it was archived in, --plan PLAN "
            f"(of the plan that ran it) or {STORE}; `failoverctl history` lists the runs a "
            "store keeps", EXIT_INPUT) from None
    except RecordsError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None

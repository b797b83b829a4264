"""How the CLI reaches a plan's records store (`spec.records`), for `history` and for
`report RUN --plan PLAN` when the journal no longer has the run.

From a plan file, or from the FailoverPlan `fop/NAME` names (its Secrets read with the
caller's own Kubernetes access). A store the CLI cannot reach from here — a directory
store lives on the controller's host, the operator's in its pod — is said, with the
command that reads it there. Not a command module: `records` and `runs` both use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller import remote
from controller.cli.base import load
from controller.console import EXIT_FAILED, EXIT_INPUT, CliError
from controller.kube import KubeError
from controller.plan import FailoverPlan
from controller.records import history
from controller.records.store import RecordMissing, RecordsError, RecordsStore, open_store
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


def archived_report(run_id: str, ref: str, namespace: str | None = None,
                    kubeconfig: str | None = None) -> dict[str, Any]:
    """The archived report of `run_id` from the records store of plan `ref`."""
    _, store = store_of(ref, namespace, kubeconfig)
    try:
        return history.find_run(store, run_id)
    except RecordMissing as exc:
        raise CliError(str(exc), EXIT_INPUT) from None
    except RecordsError as exc:
        raise CliError(str(exc), EXIT_FAILED) from None

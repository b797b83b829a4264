"""Which Kubernetes Secrets the operator may read: exactly the ones its plans name.

A plan holds no secret value, only references (`fromSecret: {name, key, namespace}`)
anywhere in its backends, probes, notifiers, coordination, backups and records store. The
operator reads each with `get` (`Operator._read_secret`: the reference's namespace, else
the operator's own). A Role with `resourceNames` cannot be written once for every
installation — the names are per plan and change with the plans — so it is generated
from the plans (`failoverctl secrets-role PLAN...`) and applied with them; rbac.yaml
itself grants no access to Secrets at all. A plan that names a Secret the Role does not
list fails to read it with a clear "forbidden", never reads another one.

`secret_names` finds the references in a plan (generically: any `fromSecret` mapping, so
a new option that takes a `SecretRef` is covered without a list to keep up to date);
`documents` turns them into one Role and RoleBinding per namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.plan import FailoverPlan

ROLE = "failover-controller-secrets"


def _refs(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        ref = value.get("fromSecret")
        if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
            yield ref
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _refs(item)


def secret_names(plans: Iterable[FailoverPlan], *, namespace: str) -> dict[str, list[str]]:
    """namespace -> the sorted names of the Secrets the plans reference there (a reference
    without a namespace is read in `namespace`, the operator's)."""
    found: dict[str, set[str]] = {}
    for plan in plans:
        for ref in _refs(plan.model_dump(mode="json", by_alias=True)):
            found.setdefault(ref.get("namespace") or namespace, set()).add(ref["name"])
    return {ns: sorted(names) for ns, names in sorted(found.items())}


def documents(plans: Iterable[FailoverPlan], *, namespace: str,
              service_account: str) -> list[dict[str, Any]]:
    """A Role granting `get` on only the named Secrets, and its RoleBinding to the
    operator's ServiceAccount, for each namespace with a referenced Secret."""
    return role_documents(secret_names(plans, namespace=namespace), namespace=namespace,
                          service_account=service_account)


def role_documents(names_by_namespace: Mapping[str, list[str]], *, namespace: str,
                   service_account: str) -> list[dict[str, Any]]:
    """The Role and RoleBinding per namespace of `names_by_namespace` (see `documents`)."""
    out: list[dict[str, Any]] = []
    for ns, names in names_by_namespace.items():
        meta = {"name": ROLE, "namespace": ns,
                "labels": {"app.kubernetes.io/name": "failover-controller"}}
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": meta,
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                               "resourceNames": names}]})
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": meta,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                "name": ROLE},
                    "subjects": [{"kind": "ServiceAccount", "name": service_account,
                                  "namespace": namespace}]})
    return out

"""Coordination: who may act on a plan, across processes and hosts.

The journal's lease already keeps two processes that share one journal file from acting
at once. A `Coordinator` widens that circle: every process on one host (`host`, a lock
file), or every host of a plan-file deployment (`etcd`, a lease + revision, as Patroni
uses it). Each acquisition yields a fencing token that only grows; the executor records
it with every attempt and the backends carry it where the target allows.

`spec.coordination` ({kind, options}, default `host`) picks one; `for_plan` builds it.
The `kubernetes` kind has no class here: the operator's Lease decides and the CLI only
requests through the FailoverPlan resource, so `for_plan` returns None for it. Every
failure to decide is a `CoordinationError`, a ConnectionError: the caller stops acting,
as for a lost lease, rather than act without knowing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from controller.plan import FailoverPlan
    from controller.secrets import Secrets


class Coordinator(Protocol):
    def acquire(self, *, holder: str, ttl: float) -> int | None:
        """Take or renew the plan's lease for `holder`: the fencing token, or None when
        another holder has it. Raises ConnectionError when the coordinator cannot be
        reached (the caller then stops acting, as for a lost lease)."""
        ...

    def release(self, *, holder: str) -> None:
        """Give the lease up at once, if `holder` has it."""
        ...

    def describe(self) -> str:
        """Where the lease lives, for messages ("etcd http://…/failover/plans/NAME")."""
        ...


class CoordinationError(ConnectionError):
    """The coordinator cannot say who holds the plan (unreachable, misconfigured, refused):
    a ConnectionError, so a caller stops acting exactly as for an unreachable etcd. The
    message names where and the fix, never a credential."""


# kind -> module holding `Options` and `build(options, *, plan, secrets)`; None: no class
# here (kubernetes: the CLI only requests through the FailoverPlan resource)
KINDS: dict[str, str | None] = {
    "host": "controller.coordination.host",
    "etcd": "controller.coordination.etcd",
    "kubernetes": None,
}


_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class KubernetesOptions(BaseModel):
    """`kind: kubernetes`: the operator's Lease decides; the CLI requests through the
    FailoverPlan resource in `namespace` (default: the plan's metadata.namespace)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    namespace: str | None = Field(None, description="the namespace of the FailoverPlan "
                                  "resource")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str | None) -> str | None:
        if value is not None and not _NAMESPACE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (lower-case "
                             "letters, digits and '-', at most 63), e.g. failover-system")
        return value


def _module(kind: str) -> Any:
    import importlib

    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not a coordination backend; use one of "
                         f"{', '.join(KINDS)}")
    name = KINDS[kind]
    return importlib.import_module(name) if name else None


def parse_options(kind: str, options: dict[str, Any]) -> BaseModel:
    """`options` validated against `kind`'s model; ValueError lines name each field
    ("options.endpoints[0]: ...") and the fix."""
    from controller.plan import _explain

    module = _module(kind)
    model: type[BaseModel] = module.Options if module is not None else KubernetesOptions
    try:
        return model.model_validate(options)
    except ValidationError as err:
        raise ValueError("; ".join(
            "options" + p.removeprefix("(document)") if p.startswith("(document)")
            else f"options.{p}" for p in _explain(err))) from None


def for_plan(plan: FailoverPlan, *, secrets: Secrets | None = None) -> Coordinator | None:
    """The coordinator `spec.coordination` names for this plan; None for `kubernetes`
    (the operator's Lease decides, the CLI only requests). Raises CoordinationError when
    it cannot be set up (an unusable lock directory, an unreadable password secret)."""
    spec = plan.spec.coordination
    module = _module(spec.kind)
    if module is None:
        return None
    coordinator: Coordinator = module.build(parse_options(spec.kind, spec.options),
                                            plan=plan.name, secrets=secrets)
    return coordinator


def kubernetes_namespace(plan: FailoverPlan) -> str:
    """`kind: kubernetes`: the namespace of the plan's FailoverPlan resource."""
    options = parse_options("kubernetes", plan.spec.coordination.options)
    assert isinstance(options, KubernetesOptions)
    namespace = options.namespace or plan.metadata.namespace
    if not namespace:
        raise CoordinationError(
            f"plan {plan.name}: spec.coordination.options.namespace is not set and the plan "
            "has no metadata.namespace; name the namespace of its FailoverPlan resource")
    return namespace

"""Lazy registry of plug-ins: backend and probe kinds by role, step kinds by action.

Owns finding a plug-in by the name a plan gives it, importing its module on first use.
Why each rule:

- **Imported by name, on first use.** Each provider package (`probes`, `traffic`, `dns`,
  `backups`, `notify`, `db`) lists its kinds in its `__init__.py` as "module:Class"; step kinds
  are the modules of `controller.steps` (`<action>.py` defining `KIND`). Only what a plan
  configures is ever imported, so a plan using Route 53 never imports the kubernetes
  client. An action with a dash is the module with an underscore (`db-failback`:
  `controller/steps/db_failback.py`).
- **Below the plan.** This module imports no controller module but the step kinds'
  interface (`controller.step_kind`, which names nothing of the plan): the plan schema
  (`controller.plan`) asks it for the kinds that validate a plan's options and step
  params, and the kinds themselves build on the schema, so every static import points
  down (plan -> registry -> step_kind; steps and providers -> plan and step_kind).

A backend class declares `Options` (a pydantic model that validates the plan's `options:`
block) and is built as `Class(options, secrets=...)`. A step kind defined outside
`controller.steps` (a test's toy kind) is added with `register_step`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import BaseModel

from controller.step_kind import StepKindProtocol

ROLES = ("probe", "traffic", "dns", "store", "restorer", "verifier", "notifier",
         "database")
_PACKAGES = {"probe": "controller.probes", "traffic": "controller.traffic",
             "dns": "controller.dns", "store": "controller.backups",
             "restorer": "controller.backups", "verifier": "controller.backups",
             "notifier": "controller.notify", "database": "controller.db"}
STEPS = "controller.steps"
COORDINATION = "controller.coordination"


def _kinds(role: str) -> dict[str, str]:
    package = importlib.import_module(_PACKAGES[role])
    if role in ("store", "restorer", "verifier"):
        by_role: dict[str, dict[str, str]] = package.KINDS_BY_ROLE
        return by_role[role]
    kinds: dict[str, str] = package.KINDS
    return kinds


def known_kinds(role: str) -> list[str]:
    return sorted(_kinds(role))


class UnknownKind(ValueError):
    pass


def load(role: str, kind: str) -> Any:
    """Import and return the class for `kind` in `role`; UnknownKind names the choices."""
    kinds = _kinds(role)
    if kind not in kinds:
        raise UnknownKind(
            f"unknown {role} kind {kind!r}; choose one of: {', '.join(sorted(kinds))}"
        )
    module_name, _, attr = kinds[kind].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def parse_options(role: str, kind: str, options: dict[str, Any]) -> BaseModel:
    cls = load(role, kind)
    model: type[BaseModel] = cls.Options
    return model.model_validate(options)


def parse_coordination(kind: str, options: dict[str, Any]) -> BaseModel:
    """`spec.coordination.options` validated by `controller.coordination`, imported by name
    like every plug-in (ValueError names the field and the fix)."""
    parsed: BaseModel = importlib.import_module(COORDINATION).parse_options(kind, options)
    return parsed


def build(role: str, kind: str, options: dict[str, Any], *, secrets: Any, **extra: Any) -> Any:
    """Instantiate a backend; probes also get `service=` (the service or signal name)."""
    cls = load(role, kind)
    return cls(parse_options(role, kind, options), secrets=secrets, **extra)


# --- step kinds -------------------------------------------------------------------------------


class UnknownAction(ValueError):
    pass


def _step_modules() -> list[str]:
    """The actions of the modules of controller.steps (`db_failback` -> `db-failback`)."""
    package = importlib.import_module(STEPS)
    return [m.name.replace("_", "-") for m in pkgutil.iter_modules(package.__path__)
            if not m.name.startswith("_")]


class _StepKinds(dict[str, StepKindProtocol]):
    """Step kinds by action, each module imported on first use."""

    def __missing__(self, action: str) -> StepKindProtocol:
        if action not in _step_modules():
            planned = [a for a in step_actions() if self[a].planned]  # not a failback's own
            raise UnknownAction(f"unknown action {action!r}; choose one of: "
                                f"{', '.join(planned)}")
        module = importlib.import_module(f"{STEPS}.{action.replace('-', '_')}")
        found: StepKindProtocol = module.KIND
        self[action] = found
        return found


STEP_KINDS = _StepKinds()


def step_actions() -> list[str]:
    """Every action a plan may name (the modules of controller.steps, registered kinds)."""
    return sorted(set(_step_modules()) | set(STEP_KINDS))


def step_kind(action: str) -> StepKindProtocol:
    """The kind of `action`; UnknownAction names the choices."""
    return STEP_KINDS[action]


def find_step_kind(action: str) -> StepKindProtocol | None:
    """The kind of `action`, or None for one not known (a journal from another version)."""
    try:
        return STEP_KINDS[action]
    except UnknownAction:
        return None


def register_step(kind: StepKindProtocol) -> None:
    """Add a kind defined outside controller.steps (e.g. a test's)."""
    STEP_KINDS[kind.action] = kind


def unregister_step(action: str) -> None:
    STEP_KINDS.pop(action, None)

"""Lazy registry of backend kinds: role + kind name -> "module:Class", imported on first use.

Each provider package (`probes`, `traffic`, `dns`, `backups`, `notify`) lists its kinds in
its `__init__.py`; only the kinds a plan configures are ever imported, so a plan using
Route 53 never imports the kubernetes client. A backend class declares `Options` (a
pydantic model that validates the plan's `options:` block) and is built as
`Class(options, secrets=...)`.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

ROLES = ("probe", "traffic", "dns", "store", "restorer", "verifier", "notifier")


def _kinds(role: str) -> dict[str, str]:
    if role == "probe":
        from controller.probes import KINDS
    elif role == "traffic":
        from controller.traffic import KINDS
    elif role == "dns":
        from controller.dns import KINDS
    elif role in ("store", "restorer", "verifier"):
        from controller.backups import KINDS_BY_ROLE

        return KINDS_BY_ROLE[role]
    elif role == "notifier":
        from controller.notify import KINDS
    else:
        raise KeyError(role)
    return KINDS


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


def build(role: str, kind: str, options: dict[str, Any], *, secrets: Any, **extra: Any) -> Any:
    """Instantiate a backend; probes also get `service=` (the service or signal name)."""
    cls = load(role, kind)
    return cls(parse_options(role, kind, options), secrets=secrets, **extra)

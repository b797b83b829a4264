"""Backends by role: `backends.traffic(name)` and its siblings hand back the plan's backend
typed by its role's protocol, and refuse, naming both roles and the fix, a backend of
another role or a kind registered under the wrong role; every registered kind (and its
fake) implements its role's protocol, so optional methods have defaults, never probing."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller import registry
from controller.backends import Backends
from controller.backups import BackupStore, Restorer, Verifier
from controller.db import Database
from controller.dns import DnsProvider
from controller.model import PermanentError
from controller.notify import Notifier
from controller.plan import ProbeSpec
from controller.probes import Probe
from controller.testing import (
    FakeBackupStore,
    FakeDnsProvider,
    FakeNotifier,
    FakeProbe,
    FakeRestorer,
    FakeTrafficBackend,
)
from controller.traffic import TrafficBackend
from tests.unit.test_engine import make_plan

PROTOCOLS: dict[str, type[Any]] = {
    "probe": Probe, "traffic": TrafficBackend, "dns": DnsProvider, "store": BackupStore,
    "restorer": Restorer, "verifier": Verifier, "notifier": Notifier, "database": Database,
}


def backends() -> Backends:
    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"] += [
            {"name": "vault", "role": "store", "kind": "memory", "options": {"key": "vault"}},
            {"name": "pg", "role": "restorer", "kind": "memory", "options": {"key": "pg"}},
            {"name": "bare", "role": "traffic", "kind": "memory", "options": {"key": "bare"}},
        ]
    return Backends(make_plan(mutate))


def test_each_role_accessor_returns_the_configured_backend_built_once() -> None:
    b = backends()
    assert isinstance(b.traffic("edge"), FakeTrafficBackend)
    assert isinstance(b.dns("zone"), FakeDnsProvider)
    assert isinstance(b.store("vault"), FakeBackupStore)
    assert isinstance(b.restorer("pg"), FakeRestorer)
    assert isinstance(b.notifier("im"), FakeNotifier)
    assert b.traffic("edge") is b.get("edge")  # one object per backend, typed or not
    assert b.traffic("edge").current() == {"dc-a": 100, "dc-b": 0}


@pytest.mark.parametrize(("accessor", "name", "message"), [
    ("traffic", "zone", "backend 'zone' is a dns backend (memory), not a traffic backend: "
                        "name a backend with `role: traffic`"),
    ("dns", "edge", "backend 'edge' is a traffic backend (memory), not a dns backend"),
    ("store", "pg", "backend 'pg' is a restorer backend (memory), not a store backend"),
    ("restorer", "vault", "not a restorer backend"),
    ("verifier", "vault", "not a verifier backend: name a backend with `role: verifier`"),
    ("notifier", "edge", "not a notifier backend"),
])
def test_a_backend_of_another_role_is_refused_naming_both(accessor: str, name: str,
                                                          message: str) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)):
        getattr(backends(), accessor)(name)


def test_a_kind_registered_under_the_wrong_role_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from controller import traffic

    b = backends()
    monkeypatch.setitem(traffic.KINDS, "memory", "controller.testing:FakeNotifier")
    with pytest.raises(PermanentError, match=re.escape(
            "backend 'bare' (memory) does not implement TrafficBackend")):
        b.traffic("bare")


def test_probe_accessor_builds_a_probe_for_its_owner() -> None:
    probe = backends().probe("web", ProbeSpec(kind="memory", options={"key": "dc-a"}))
    assert isinstance(probe, FakeProbe) and probe.service == "web"


@pytest.mark.parametrize("role", sorted(PROTOCOLS))
def test_every_registered_kind_implements_its_role_protocol(role: str) -> None:
    """Nominally (each class subclasses its protocol), so a method the protocol makes
    optional has its default and no caller needs `hasattr`."""
    for kind in registry.known_kinds(role):
        cls = registry.load(role, kind)
        assert PROTOCOLS[role] in cls.__mro__, \
            f"{role} kind {kind}: {cls.__name__} does not subclass {PROTOCOLS[role].__name__}"

"""`failoverctl ready` asks each backend through its role's protocol: `ready()` returning
None (the protocols' default) adds no check, a backend's own check is reported as passed
or failed under `backend NAME`, and a kind that does not implement its role's protocol is
a failed check naming the protocol, never a silent pass."""

from __future__ import annotations

from typing import Any

import pytest

from controller import readiness, traffic
from controller.backends import Backends
from controller.readiness import Check
from controller.testing import FakeTrafficBackend, FakeTrafficOptions
from tests.unit.test_engine import make_plan


class CheckedEdge(FakeTrafficBackend):
    def ready(self) -> str:
        return "admin socket answers; servers web1, web2 exist"


class DownEdge(FakeTrafficBackend):
    def ready(self) -> str:
        raise ConnectionRefusedError("admin socket /run/haproxy.sock refused the connection")


class NotTraffic:
    """Registered as a traffic kind, but implements nothing of `TrafficBackend`."""

    Options = FakeTrafficOptions

    def __init__(self, options: FakeTrafficOptions, *, secrets: Any = None):
        self.options = options


def backend_checks(kind: str, monkeypatch: pytest.MonkeyPatch) -> list[Check]:
    for name, cls in (("checked", CheckedEdge), ("down", DownEdge), ("not-traffic", NotTraffic)):
        monkeypatch.setitem(traffic.KINDS, name, f"{__name__}:{cls.__name__}")
    plan = make_plan(lambda spec: spec["backends"][0].update(kind=kind))
    return [c for c in readiness.checks(plan, Backends(plan), timeout=5)
            if c.name.startswith("backend ")]


def test_a_backend_with_nothing_to_check_adds_no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_checks("memory", monkeypatch) == []


def test_a_backends_own_check_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_checks("checked", monkeypatch) == [
        Check("backend edge", True, "admin socket answers; servers web1, web2 exist")]
    assert backend_checks("down", monkeypatch) == [
        Check("backend edge", False, "ConnectionRefusedError: admin socket "
                                     "/run/haproxy.sock refused the connection")]


def test_a_kind_that_does_not_implement_its_role_fails_its_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    [check] = backend_checks("not-traffic", monkeypatch)
    assert check.name == "backend edge" and not check.ok
    assert "does not implement TrafficBackend" in check.detail

"""`spec.coordination`: the schema (default host, etcd, kubernetes), errors that name the
field and the fix, `for_plan` building the coordinator, and where host locks live."""

from __future__ import annotations

import copy
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import coordination
from controller.coordination import CoordinationError, host
from controller.coordination.etcd import EtcdCoordinator, http_timeout
from controller.coordination.host import HostLock
from controller.plan import FailoverPlan, PlanError, json_schema, parse_plan

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())


def plan_with(coordination_spec: Any = None, namespace: str | None = None) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    if coordination_spec is not None:
        data["spec"]["coordination"] = coordination_spec
    if namespace is not None:
        data["metadata"]["namespace"] = namespace
    return parse_plan(data)


def problems(coordination_spec: Any) -> str:
    with pytest.raises(PlanError) as caught:
        plan_with(coordination_spec)
    return "; ".join(caught.value.problems)


def test_the_default_is_one_lock_per_plan_on_this_host(tmp_path: Path) -> None:
    plan = plan_with()
    assert plan.spec.coordination.kind == "host" and plan.spec.coordination.options == {}
    built = coordination.for_plan(plan_with({"kind": "host",
                                             "options": {"lockDir": str(tmp_path)}}))
    assert isinstance(built, HostLock)
    assert built.path == tmp_path / "memory-drill.lock"
    assert built.describe() == f"host lock {tmp_path}/memory-drill.lock"


def test_etcd_builds_a_coordinator_on_the_plans_key() -> None:
    built = coordination.for_plan(plan_with({"kind": "etcd", "options": {
        "endpoints": ["http://10.0.0.1", "https://etcd2.example.com:2380/"]}}))
    assert isinstance(built, EtcdCoordinator)
    assert built.key == "/failover/plans/memory-drill"
    assert built.options.endpoints == ["http://10.0.0.1:2379", "https://etcd2.example.com:2380"]
    assert built.describe() == ("etcd http://10.0.0.1:2379,https://etcd2.example.com:2380 "
                                "/failover/plans/memory-drill")


def test_kubernetes_has_no_coordinator_here_and_names_the_resources_namespace() -> None:
    plan = plan_with({"kind": "kubernetes", "options": {"namespace": "payments"}})
    assert coordination.for_plan(plan) is None  # the CLI only requests through fop/NAME
    assert coordination.kubernetes_namespace(plan) == "payments"
    assert coordination.kubernetes_namespace(
        plan_with({"kind": "kubernetes"}, namespace="ops")) == "ops"
    with pytest.raises(CoordinationError, match=r"options\.namespace is not set"):
        coordination.kubernetes_namespace(plan_with({"kind": "kubernetes"}))


@pytest.mark.parametrize(("spec", "expected"), [
    ({"kind": "zookeeper"}, "spec.coordination.kind: Input should be 'host', 'etcd' or "
                            "'kubernetes' (got 'zookeeper')"),
    ({"kind": "etcd"}, "spec.coordination: options.endpoints: required field is missing"),
    ({"kind": "etcd", "options": {"endpoints": []}},
     "options.endpoints: list at least one etcd client URL"),
    ({"kind": "etcd", "options": {"endpoints": ["etcd1:2379"]}},
     "options.endpoints[0]: 'etcd1:2379' is not an http(s) URL; write e.g. https://"),
    ({"kind": "etcd", "options": {"endpoints": ["https://root:pw@etcd1:2379"]}},
     "options.endpoints[0]: put no credentials in the URL; use username and password"),
    ({"kind": "etcd", "options": {"endpoints": ["http://etcd1:2379/v3"]}},
     "options.endpoints[0]: 'http://etcd1:2379/v3' has a path"),
    ({"kind": "etcd", "options": {"endpoints": ["http://e:1"], "prefix": "failover"}},
     "options.prefix: 'failover' must start and end with '/'"),
    ({"kind": "etcd", "options": {"endpoints": ["http://e:1"], "username": "root",
                                  "password": {"fromEnv": "ETCD_PW"}}},
     "options: a password is only sent over TLS; make every endpoint https://"),
    ({"kind": "etcd", "options": {"endpoints": ["https://e:1"], "username": "root"}},
     "options: give both username and password (a secret reference), or neither"),
    ({"kind": "etcd", "options": {"endpoints": ["https://e:1"], "username": "root",
                                  "password": "hunter22"}},
     "options.password: Input should be a valid dictionary"),
    ({"kind": "etcd", "options": {"endpoints": ["https://e:1"], "certFile": "/c.pem"}},
     "options: give both certFile and keyFile"),
    ({"kind": "etcd", "options": {"endpoints": ["http://e:1"], "caFile": "/ca.pem"}},
     "options: caFile/certFile/keyFile are TLS settings; every endpoint must then be https://"),
    ({"kind": "etcd", "options": {"endpoints": ["http://e:1"], "ttl": 5}},
     "options.ttl: unknown field; remove it or check its spelling"),
    ({"kind": "host", "options": {"lockDir": "locks"}},
     "options.lockDir: 'locks' is relative; give an absolute path"),
    ({"kind": "kubernetes", "options": {"namespace": "Payments_NS"}},
     "options.namespace: 'Payments_NS' is not a Kubernetes namespace name"),
])
def test_bad_coordination_names_the_field_and_the_fix(spec: dict[str, Any],
                                                      expected: str) -> None:
    message = problems(spec)
    assert expected in message
    assert "hunter22" not in message  # a value where a secret reference belongs: not echoed


def test_an_unreadable_password_is_named_by_where_it_was_looked_for() -> None:
    plan = plan_with({"kind": "etcd", "options": {
        "endpoints": ["https://etcd1:2379"], "username": "root",
        "password": {"fromEnv": "NO_SUCH_ETCD_PASSWORD"}}})
    with pytest.raises(CoordinationError, match="environment variable NO_SUCH_ETCD_PASSWORD "
                                                "is not set"):
        coordination.for_plan(plan)


def test_the_schema_documents_coordination() -> None:
    text = str(json_schema())
    assert "coordination" in text and "lockDir" in text


@pytest.mark.parametrize(("ttl", "timeout"), [(30, 2.0), (3, 1.0), (0.3, 0.1), (0, 0.05)])
def test_etcd_calls_time_out_well_within_the_lease(ttl: float, timeout: float) -> None:
    assert http_timeout(ttl) == pytest.approx(timeout)


def test_the_lock_directory_is_shared_like_tmp_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        lock = HostLock("payments", lock_dir=tmp_path / "locks")
        token = lock.acquire(holder="me", ttl=30)
        assert token is not None
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "locks").stat().st_mode) == 0o1777
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o666
    assert lock.path.read_text() == f"{token:020d}\n"
    assert [p.name for p in (tmp_path / "locks").iterdir()] == ["payments.lock"]


def test_without_run_lock_the_default_is_under_tmpdir(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "DEFAULT_DIR", tmp_path / "no-run-lock" / "failoverctl")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    (tmp_path / "tmp").mkdir()
    assert HostLock("payments").directory == tmp_path / "tmp" / "failoverctl-locks"


def test_an_unusable_default_directory_is_an_error_not_another_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = tmp_path / "failoverctl"
    taken.write_text("")  # something else has the name: locking elsewhere would split
    monkeypatch.setattr(host, "DEFAULT_DIR", taken)
    with pytest.raises(CoordinationError, match=f"{taken} is not a directory.*lockDir"):
        HostLock("payments")

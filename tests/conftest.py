"""Shared test fixtures: a fresh journal and a clean in-memory world per test, and `kube`:
one real etcd + kube-apiserver per session (project RBAC and CRDs + the mesh CRDs of
tests/crds), stopped by PID at the end. A missing binary fails the tests that use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import testing
from controller.drill.servers.base import ServerError
from controller.drill.servers.kube import KubeServers
from controller.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_fakes() -> Iterator[None]:
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[KubeServers]:
    """etcd + kube-apiserver (RBAC on) with identities `admin` and `controller`."""
    servers = KubeServers(crds=[ROOT / "tests/crds"])
    problem = ""
    try:
        servers.start()
    except ServerError as exc:  # e.g. the binary is missing: fail, never skip
        problem = str(exc)
    if problem:
        pytest.fail(f"cannot start the Kubernetes API server: {problem}", pytrace=False)
    line = (f"kube-apiserver + etcd ready in {servers.startup_seconds:.1f} s at {servers.url} "
            "(RBAC, project CRDs and tests/crds installed)")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin(
        "capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # once per session, past the capture
            reporter.write_line(f"\n{line}")
    else:
        print(line)
    yield servers
    servers.stop()

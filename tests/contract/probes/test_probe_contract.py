"""The `Probe` contract, run through the same tests for the in-memory fake and the HTTP,
DNS, PostgreSQL and Prometheus probes against real servers on loopback.

What the engine relies on from every sample, for the four states a checked service can
be in: a service that answers as expected gives an ok sample for the probe's service,
with its latency; one that answers wrongly gives a failed sample saying what it
answered; one that accepts the check and never answers gives a failed sample saying it
timed out, returned once the probe's own timeout passes; one that cannot be reached
gives a failed sample naming where it looked. A check never raises: the failure *is*
the sample. (Each probe's own answers are in the test_probe_*.py beside this one.)
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller import registry, testing
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.prometheus import PrometheusServer
from controller.model import Sample
from controller.probes import Probe
from controller.secrets import Secrets
from tests.contract.probes.conftest import DnsServer, HttpBackend, closed_port

KINDS = ("memory", "http", "dns", "postgres", "prometheus")
TIMEOUT = "500ms"
_N = itertools.count()


class State(enum.Enum):
    OK = "ok"
    FAILING = "failing"  # answers, but not what the probe expects
    HANG = "hang"  # accepts the check and never answers
    UNREACHABLE = "unreachable"  # nothing there


@dataclass
class Service:
    kind: str
    options: Callable[[State], dict[str, Any]]  # the probe's options for the service so
    where: Callable[[State], str]  # what an unreachable sample must name


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="probe-contract-pg-"))
    base.chmod(0o755)
    try:
        with PostgresServer(base / "pg") as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    with PrometheusServer() as server:
        yield server


@pytest.fixture(params=KINDS)
def service(request: pytest.FixtureRequest, mute_port: int) -> Service:
    kind: str = request.param
    dead = closed_port()
    if kind == "memory":
        key = f"contract-{next(_N)}"

        def memory(state: State) -> dict[str, Any]:
            if state is State.FAILING:
                testing.set_health(key, False)
            elif state is not State.OK:
                testing.set_fault(key, testing.ProbeFault(state.value))
            return {"key": key, "timeout": 0.5}
        return Service(kind, memory, lambda state: key)
    if kind == "http":
        web: HttpBackend = request.getfixturevalue("http_backend")
        urls = {State.OK: f"{web.url}/ok", State.FAILING: f"{web.url}/status/503",
                State.HANG: f"http://127.0.0.1:{mute_port}/",
                State.UNREACHABLE: f"http://127.0.0.1:{dead}/"}
        return Service(kind, lambda state: {"url": urls[state], "timeout": TIMEOUT},
                       lambda state: f"127.0.0.1:{dead}")
    if kind == "dns":
        server: DnsServer = request.getfixturevalue("dns_server")

        def dns(state: State) -> dict[str, Any]:
            server.mode = {State.FAILING: "servfail", State.HANG: "silent"}.get(state, "ok")
            port = dead if state is State.UNREACHABLE else server.port
            return {"name": "www.example.test", "expect": ["192.0.2.10"],
                    "nameservers": ["127.0.0.1"], "port": port, "timeout": TIMEOUT}
        return Service(kind, dns, lambda state: f"127.0.0.1:{dead}")
    if kind == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres")

        def postgres(state: State) -> dict[str, Any]:
            if state in (State.OK, State.FAILING):
                query = "SELECT 1" if state is State.OK else "SELECT * FROM no_such_table"
                return {"host": str(pg.sock), "port": pg.port, "query": query,
                        "timeout": TIMEOUT}
            port = mute_port if state is State.HANG else dead
            return {"host": "127.0.0.1", "port": port, "timeout": TIMEOUT}
        return Service(kind, postgres, lambda state: f"port {dead}")
    prom: PrometheusServer = request.getfixturevalue("prometheus")
    urls = {State.HANG: f"http://127.0.0.1:{mute_port}",
            State.UNREACHABLE: f"http://127.0.0.1:{dead}"}
    return Service(kind, lambda state: {
        "url": urls.get(state, prom.url), "query": "vector(180)", "timeout": TIMEOUT,
        "max": 100 if state is State.FAILING else 250}, lambda state: f"127.0.0.1:{dead}")


def check(service: Service, state: State) -> Sample:
    probe = registry.build("probe", service.kind, service.options(state), secrets=Secrets(),
                           service="orders")
    assert isinstance(probe, Probe)

    async def run() -> Sample:
        try:
            async with asyncio.timeout(60):  # a guard against a hang, not a measurement
                return await probe.check()
        finally:
            await probe.aclose()
    return asyncio.run(run())


def test_a_service_that_answers_as_expected_is_an_ok_sample(service: Service) -> None:
    sample = check(service, State.OK)
    assert sample.ok, sample.detail
    assert sample.service == "orders" and sample.latency is not None


def test_a_service_that_answers_wrongly_is_a_failed_sample_saying_why(
        service: Service) -> None:
    sample = check(service, State.FAILING)
    assert not sample.ok and sample.service == "orders"
    assert sample.detail


def test_a_service_that_never_answers_is_a_failed_sample_after_the_timeout(
        service: Service) -> None:
    sample = check(service, State.HANG)
    assert not sample.ok and sample.service == "orders"
    assert "timed out after 0.5 s" in sample.detail, sample.detail


def test_a_service_that_cannot_be_reached_is_a_failed_sample_naming_where(
        service: Service) -> None:
    sample = check(service, State.UNREACHABLE)
    assert not sample.ok and sample.service == "orders"
    assert service.where(State.UNREACHABLE) in sample.detail, sample.detail

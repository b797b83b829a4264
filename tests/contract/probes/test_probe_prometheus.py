"""Prometheus probe against a loopback HTTP server speaking the /api/v1/query format.

For the answers a healthy Prometheus rarely gives on demand (a scalar, NaN, a proxy's
HTML error page): the server below answers with the documented JSON shapes. The live
cases, against a real `prometheus` scraping an exporter, are in
test_probe_prometheus_live.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from controller import registry
from controller.model import Sample
from controller.probes.prometheus import QueryError, extract_value
from controller.secrets import Secrets

ANSWERS: dict[str, tuple[int, Any]] = {
    "sum(tickets)": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1700000000.0, "180"]}]}}),
    "scalar(tickets)": (200, {"status": "success",
                              "data": {"resultType": "scalar", "result": [1.0, "42.5"]}}),
    "none": (200, {"status": "success", "data": {"resultType": "vector", "result": []}}),
    "tickets": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"q": "a"}, "value": [1.0, "1"]}, {"metric": {"q": "b"}, "value": [1.0, "2"]}
    ]}}),
    "nan": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, "NaN"]}]}}),
    "bad(": (400, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
    "html": (502, "<html>bad gateway</html>"),
}


def answer(query: str) -> tuple[int, Any]:
    return ANSWERS[query]


def check(make_backend: Callable[..., Any], query: str, **options: Any) -> Sample:
    server = make_backend(prometheus=answer)
    probe = registry.build("probe", "prometheus", {"url": server.url, "query": query,
                                                   **options},
                           secrets=Secrets(), service="complaints")

    async def run() -> Sample:
        try:
            return await probe.check()
        finally:
            await probe.aclose()
    return asyncio.run(run())


def test_vector_value_becomes_the_sample_value(make_backend: Any) -> None:
    s = check(make_backend, "sum(tickets)")
    assert s.ok and s.value == 180.0 and s.service == "complaints"


def test_scalar(make_backend: Any) -> None:
    assert check(make_backend, "scalar(tickets)").value == 42.5


def test_empty_result_fails_unless_it_has_a_meaning(make_backend: Any) -> None:
    s = check(make_backend, "none")
    assert not s.ok and "no series" in s.detail
    zero = check(make_backend, "none", emptyValue=0)
    assert zero.ok and zero.value == 0.0


def test_several_series_must_be_aggregated(make_backend: Any) -> None:
    s = check(make_backend, "tickets")
    assert not s.ok and "2 series" in s.detail and "sum(" in s.detail


def test_errors_and_garbage(make_backend: Any) -> None:
    err = check(make_backend, "bad(")
    assert not err.ok and "bad_data parse error" in err.detail
    html = check(make_backend, "html")
    assert not html.ok and "status 502, answer is not JSON" in html.detail
    nan = check(make_backend, "nan")
    assert not nan.ok and "NaN" in nan.detail


def test_bounds_make_it_a_health_check(make_backend: Any) -> None:
    s = check(make_backend, "sum(tickets)", max=150)
    assert not s.ok and s.value == 180.0 and "outside" in s.detail


def test_unreachable(dead_port: int) -> None:
    probe = registry.build("probe", "prometheus",
                           {"url": f"http://127.0.0.1:{dead_port}", "query": "up"},
                           secrets=Secrets(), service="complaints")

    async def run() -> Sample:
        try:
            return await probe.check()
        finally:
            await probe.aclose()
    s = asyncio.run(run())
    assert not s.ok and "connection refused" in s.detail


@pytest.mark.parametrize("payload", [None, [], {"status": "success", "data": {}},
                                     {"status": "success", "data": {"resultType": "matrix",
                                                                    "result": []}}])
def test_extract_value_rejects_malformed(payload: Any) -> None:
    with pytest.raises(QueryError):
        extract_value(payload)

"""The Prometheus probe against a real `prometheus` scraping an exporter the test drives:
the business signal (ticket volume) read through PromQL as the probe's value, limits,
an empty result and a query Prometheus itself refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from controller import registry
from controller.drill.servers.prometheus import PrometheusServer
from controller.model import Sample
from controller.secrets import Secrets


@pytest.fixture(scope="module")
def prom() -> Iterator[PrometheusServer]:
    with PrometheusServer() as server:
        yield server


def probe(prom: PrometheusServer, query: str, **options: Any) -> Sample:
    p = registry.build("probe", "prometheus", {"url": prom.url, "query": query, **options},
                       secrets=Secrets(), service="complaints")

    async def run() -> Sample:
        try:
            return await p.check()
        finally:
            await p.aclose()
    return asyncio.run(run())


def test_ticket_volume_is_the_sample_value_and_follows_the_exporter(
        prom: PrometheusServer) -> None:
    prom.set({'tickets{queue="a"}': 100, 'tickets{queue="b"}': 80})
    prom.wait_for("sum(tickets)", 180)
    s = probe(prom, "sum(tickets)", max=250)
    assert s.ok and s.value == 180.0, s.detail

    prom.set({'tickets{queue="a"}': 200, 'tickets{queue="b"}': 100})  # a complaint surge
    prom.wait_for("sum(tickets)", 300)
    surge = probe(prom, "sum(tickets)", max=250)
    assert not surge.ok and surge.value == 300.0 and "300" in surge.detail


def test_several_series_empty_results_and_refused_queries(prom: PrometheusServer) -> None:
    prom.set({'tickets{queue="a"}': 1, 'tickets{queue="b"}': 2})
    prom.wait_for("sum(tickets)", 3)
    several = probe(prom, "tickets")
    assert not several.ok and "2 series" in several.detail
    empty = probe(prom, "sum(no_such_metric)")
    assert not empty.ok and "no series" in empty.detail
    assert probe(prom, "sum(no_such_metric)", emptyValue=0).value == 0.0
    refused = probe(prom, "sum(tickets")
    assert not refused.ok and "bad_data" in refused.detail, refused.detail

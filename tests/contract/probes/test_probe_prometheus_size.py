"""The Prometheus probe's answer is bounded (issue 21, item 6): a huge answer (a query that
forgot its `sum(...)`, a proxy's error stream, a hostile endpoint) fails fast with a message
naming the limit, and the controller's memory stays flat.

A real aiohttp server generates 50 MiB on the fly, chunked and with a Content-Length; the
probe's peak memory (VmHWM, reset through /proc/self/clear_refs) is measured around it.
Before the fix the probe read the whole answer: +100 MiB and more for 50 MiB.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller import registry
from controller.model import Sample
from controller.secrets import Secrets
from tests.contract.probes.conftest import LoopThread

MiB = 1024 * 1024
BLOCK = b'{"metric":{"pod":"' + b"p" * 60_000 + b'"},"value":[1,"1"]},'


class BigAnswers:
    """/chunked/api/v1/query and /sized/api/v1/query: `size` bytes of vector JSON made
    on the fly; /small/api/v1/query: a normal one-series answer. Counts bytes sent."""

    def __init__(self, size: int):
        self.size, self.sent = size, 0
        self._lt = LoopThread()
        self.port = self._lt.call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/chunked/api/v1/query", self._chunked)
        app.router.add_get("/sized/api/v1/query", self._sized)
        app.router.add_get("/small/api/v1/query", self._small)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _stream(self, request: web.Request, sized: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if sized:
            resp.content_length = self.size
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        head = b'{"status":"success","data":{"resultType":"vector","result":['
        await resp.write(head)
        left = self.size - len(head)
        while left > 0:
            block = BLOCK[:left]
            await resp.write(block)
            self.sent += len(block)
            left -= len(block)
        await resp.write_eof()
        return resp

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, sized=False)

    async def _sized(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, sized=True)

    async def _small(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"resultType": "vector",
                                  "result": [{"metric": {}, "value": [1.0, "7"]}]}})

    def close(self) -> None:
        self._lt.call(self._runner.cleanup())
        self._lt.close()


@pytest.fixture
def big() -> Iterator[BigAnswers]:
    server = BigAnswers(50 * MiB)
    yield server
    server.close()


def probe_once(url: str, **options: Any) -> Sample:
    probe = registry.build("probe", "prometheus", {"url": url, "query": "tickets", **options},
                           secrets=Secrets(), service="complaints")

    async def run() -> Sample:
        try:
            return await probe.check()
        finally:
            await probe.aclose()
    return asyncio.run(run())


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def peak_growth_mib(action: Any) -> tuple[Any, float]:
    """Run `action`; how far the process's peak RSS rose above its RSS before, in MiB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = status_kib("VmRSS")
    result = action()
    return result, (status_kib("VmHWM") - before) / 1024


@pytest.mark.parametrize("framing", ["chunked", "sized"])
def test_a_huge_answer_fails_fast_naming_the_limit_and_memory_stays_flat(
        big: BigAnswers, framing: str) -> None:
    started = time.monotonic()
    sample, growth = peak_growth_mib(lambda: probe_once(f"{big.url}/{framing}"))
    took = time.monotonic() - started
    assert not sample.ok
    assert "answer is larger than 1 MiB (maxAnswer)" in sample.detail, sample.detail
    assert "sum(" in sample.detail  # says what to do
    assert growth < 24, f"peak memory grew {growth:.0f} MiB for a 50 MiB answer"
    assert took < 3
    assert big.sent < 20 * MiB  # the probe stopped reading; the server stopped sending


def test_the_limit_is_an_option_and_normal_answers_pass(big: BigAnswers) -> None:
    assert probe_once(f"{big.url}/small").value == 7.0
    bigger = BigAnswers(3 * MiB)
    try:
        s = probe_once(f"{bigger.url}/chunked", maxAnswer=4 * MiB)
        # read in full (the generated answer is cut mid-series, so it is not JSON)
        assert not s.ok and s.detail.endswith("status 200, answer is not JSON"), s.detail
        limited = probe_once(f"{bigger.url}/sized", maxAnswer=2 * MiB)
        assert not limited.ok and "larger than 2 MiB (maxAnswer)" in limited.detail
    finally:
        bigger.close()


def test_max_answer_is_validated_and_documented() -> None:
    from controller.probes.prometheus import PrometheusOptions

    field = PrometheusOptions.model_json_schema(by_alias=True)["properties"]["maxAnswer"]
    assert field["default"] == MiB and "bytes" in field["description"]
    with pytest.raises(Exception, match="maxAnswer"):
        registry.parse_options("probe", "prometheus", {"url": "http://p", "query": "up",
                                                       "maxAnswer": 10})

"""Prometheus instant-query probe: a PromQL expression -> one number in `Sample.value`.

Business signals ("complaint / ticket volume more than 50 % above the daily average")
live in monitoring systems, not in health endpoints. This probe asks Prometheus's
`/api/v1/query` for one number and returns it as the sample's `value`; the policy compares
it with the signal's baseline. The sample is ok when the query answered a finite number
(and, if given, it lies within `min`/`max`, which makes the probe usable as a plain health
check too). The query must return exactly one series — aggregate with `sum(...)` — or a
scalar; an empty result is a failure unless `emptyValue` says what it means (e.g. 0
tickets). It shares the scheduler's pooled HTTP session like the HTTP probe.

The answer is read as a stream and bounded by `maxAnswer` (1 MiB by default; one number is
a few hundred bytes): a query that forgot its `sum(...)` over a big metric, a proxy's error
stream or a hostile endpoint fails the check as soon as the bound is passed (or at once,
when Content-Length announces more), instead of holding the whole answer — and several
times its size while parsing — in the controller's memory.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.model import Sample
from controller.plan import Duration
from controller.probes.http import SessionUser, describe_http_error, ssl_setting, where
from controller.probes.tcp import failed, short
from controller.secrets import SecretRef, Secrets


class PrometheusOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    url: str = Field(description="Prometheus base URL, e.g. http://prometheus:9090")
    query: str = Field(description="PromQL returning one series or a scalar")
    min: float | None = None
    max: float | None = None
    empty_value: float | None = Field(None, alias="emptyValue",
                                      description="value of an empty result; null = failure")
    timeout: Duration = 5.0
    max_answer: int = Field(
        1024 * 1024, alias="maxAnswer", ge=4096,
        description="largest answer read, in bytes (default 1 MiB); a larger one fails the "
                    "check without being read further")
    bearer_token: SecretRef | None = Field(None, alias="bearerToken")
    verify_tls: bool = Field(True, alias="verifyTls")
    ca_file: str | None = Field(None, alias="caFile")

    @field_validator("url")
    @classmethod
    def _base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class QueryError(Exception):
    """The answer was not one usable number; the message says why."""


def size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}" if n % size else f"{n // size} {unit}"
    return f"{n} bytes"


def too_large(limit: int) -> QueryError:
    return QueryError(f"answer is larger than {size_text(limit)} (maxAnswer): aggregate "
                      "the query to one number (e.g. sum(...)) or raise maxAnswer")


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole answer, streamed; `QueryError` as soon as it is known to exceed `limit`."""
    if resp.content_length is not None and resp.content_length > limit:
        raise too_large(limit)
    parts: list[bytes] = []
    got = 0
    while True:
        part = await resp.content.read(limit + 1 - got)
        if not part:
            return b"".join(parts)
        got += len(part)
        if got > limit:
            raise too_large(limit)
        parts.append(part)


def extract_value(payload: Any, *, empty_value: float | None = None) -> float:
    """Prometheus query API JSON -> the single number it holds."""
    if not isinstance(payload, dict):
        raise QueryError("answer is not a JSON object")
    if payload.get("status") != "success":
        raise QueryError(f"query failed: {payload.get('errorType', '')} "
                         f"{payload.get('error', 'unknown error')}".strip())
    data = payload.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind in ("scalar", "string"):
        raw = result[1] if isinstance(result, list) and len(result) == 2 else None
    elif kind == "vector" and isinstance(result, list):
        if not result:
            if empty_value is None:
                raise QueryError("query returned no series")
            return empty_value
        if len(result) > 1:
            raise QueryError(f"query returned {len(result)} series; aggregate it "
                             "(e.g. sum(...)) to one")
        raw = (result[0].get("value") or [None, None])[1]
    else:
        raise QueryError(f"unsupported result type {kind!r}; use an instant vector or scalar")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QueryError(f"not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise QueryError(f"value is {raw}")
    return value


class PrometheusProbe(SessionUser):
    """Instant query; the number is the sample's `value` (for business signals)."""

    Options = PrometheusOptions

    def __init__(self, options: PrometheusOptions, *, secrets: Secrets | None = None,
                 service: str = ""):
        self.options, self.service = options, service
        self._endpoint = f"{options.url}/api/v1/query"
        self._where = where(self._endpoint)
        self._headers: dict[str, str] = {"Accept": "application/json"}
        if options.bearer_token is not None:
            token = (secrets or Secrets()).reveal(options.bearer_token).strip()
            self._headers["Authorization"] = f"Bearer {token}"
        self._ssl = ssl_setting(options.verify_tls, options.ca_file)

    def _fail(self, at: float, start: float, why: str) -> Sample:
        return failed(self.service, at, start, f"prometheus {self._where}: {why}")

    async def check(self) -> Sample:
        opts = self.options
        session = self._open_session()
        at, start = time.time(), time.monotonic()
        try:
            async with asyncio.timeout(opts.timeout):
                async with session.get(
                    self._endpoint, params={"query": opts.query}, headers=self._headers,
                    ssl=self._ssl, allow_redirects=False,
                ) as resp:
                    status = resp.status
                    body = await read_bounded(resp, opts.max_answer)
        except QueryError as exc:
            return self._fail(at, start, f"status {status}, {exc}")
        except Exception as exc:
            return self._fail(at, start, describe_http_error(exc, timeout=opts.timeout))
        latency = time.monotonic() - start
        try:
            payload = json.loads(body)
        except ValueError:
            return self._fail(at, start, f"status {status}, answer is not JSON")
        try:
            value = extract_value(payload, empty_value=opts.empty_value)
        except QueryError as exc:
            return self._fail(at, start, f"status {status}, {exc}")
        if (opts.min is not None and value < opts.min) or (
                opts.max is not None and value > opts.max):
            return Sample(self.service, False, at, latency=latency, value=value,
                          detail=short(f"prometheus: {value:g} outside "
                                       f"[{opts.min if opts.min is not None else '-inf'}, "
                                       f"{opts.max if opts.max is not None else 'inf'}]"))
        return Sample(self.service, True, at, latency=latency, value=value,
                      detail=f"prometheus: {value:g}")

"""HTTP(S) probe on aiohttp: expected status, latency budget and optional body match.

Connection reuse matters at scale, so probes share one `aiohttp.ClientSession` per event
loop: the scheduler creates it with `make_session` and hands it to every probe that has
`use_session` (HTTP and Prometheus). A probe used on its own opens a private session on
first use and closes it in `aclose`. Host names are looked up by `ProbeResolver` on the
loop (`controller/probes/resolve.py`), never on a thread pool that one dead nameserver
could exhaust. Every failure — refused, reset, TLS, garbage HTTP, wrong status, missing
body text, truncated body, over the latency budget, hung server — is a failed `Sample`
whose detail says why; secrets (header values from SecretRefs, URL passwords) never
appear in it.

Healthy means 2xx by default: a redirect is usually to a maintenance, login or error page,
so 3xx counts only with `acceptRedirects: true` (or listed in `expectStatus`). The body is
read until its end or `maxBody` bytes, whichever comes first, however many pieces the
server writes it in, and `bodyMatch` is searched in what was read.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from typing import Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.model import Sample
from controller.plan import Duration
from controller.probes.resolve import ProbeResolver, default_resolver
from controller.probes.resolving import ResolverUser
from controller.probes.tcp import describe_error, failed
from controller.secrets import SecretRef, Secrets

USER_AGENT = "failover-controller-probe/1"


def make_session(*, limit: int = 256,
                 resolver: ProbeResolver | None = None) -> aiohttp.ClientSession:
    """One pooled session for many probes (call inside the loop that will use it); host
    names go through `resolver` (default: the process-wide `ProbeResolver`)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=10,
                                     resolver=resolver or default_resolver())
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),  # each probe bounds its own request
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
    )


def describe_http_error(exc: BaseException, *, timeout: float) -> str:
    """aiohttp's exceptions -> the short reasons operators read in status lines."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return describe_error(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientSSLError):
        os_error = getattr(exc, "os_error", None)
        return describe_error(os_error) if os_error is not None else "TLS error"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_error(exc.os_error, timeout=timeout)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection without a complete response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "invalid or truncated response body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    return describe_error(exc, timeout=timeout)


class HttpOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    url: str
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: list[int] = Field(
        default_factory=list, alias="expectStatus",
        description="accepted status codes; empty = any 2xx (and 3xx with acceptRedirects)")
    accept_redirects: bool = Field(
        False, alias="acceptRedirects",
        description="also count 3xx answers as healthy (redirects are not followed); off by "
                    "default because a redirect is often to a maintenance, login or error "
                    "page; ignored when expectStatus is given")
    body_match: str | None = Field(None, alias="bodyMatch",
                                   description="regular expression the body must contain")
    latency_budget: Duration | None = Field(
        None, alias="latencyBudget", description="a slower answer counts as a failure")
    timeout: Duration = 5.0
    headers: dict[str, str] = Field(default_factory=dict)
    secret_headers: dict[str, SecretRef] = Field(
        default_factory=dict, alias="secretHeaders",
        description="header values read from secrets, e.g. Authorization")
    verify_tls: bool = Field(True, alias="verifyTls")
    ca_file: str | None = Field(None, alias="caFile")
    max_body: int = Field(65536, alias="maxBody", ge=0,
                          description="read at most this many bytes of the body (until its "
                                      "end if shorter); bodyMatch searches what was read")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http:// or https:// with a host, got {value!r}")
        return value

    @field_validator("body_match")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bodyMatch is not a valid regular expression: {exc}") from None
        return value

    @field_validator("expect_status")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 100 <= code <= 599:
                raise ValueError(f"expectStatus: {code} is not an HTTP status code")
        return value


def where(url: str) -> str:
    """The URL as shown in details: no user:password, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body until its end or `limit` bytes, however many pieces it arrives in."""
    if limit <= 0:
        return b""
    first = await content.read(limit)
    if len(first) >= limit or not first or content.at_eof():
        return first
    parts, got = [first], len(first)
    while got < limit:
        part = await content.read(limit - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class SessionUser(ResolverUser):
    """A probe that talks HTTP: uses the scheduler's pooled session when given one
    (`use_session`), or opens a small one of its own that `aclose` closes."""

    uses_session = True
    _session: aiohttp.ClientSession | None = None
    _own_session = False

    def use_session(self, session: aiohttp.ClientSession) -> None:
        self._session, self._own_session = session, False

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = make_session(limit=4, resolver=self.resolver)
            self._own_session = True
        return self._session

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None


def ssl_setting(verify: bool, ca_file: str | None) -> ssl.SSLContext | bool:
    if not verify:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


class HttpProbe(SessionUser):
    """GET (or HEAD/POST) a URL; ok when status, body and latency are all as expected."""

    Options = HttpOptions

    def __init__(self, options: HttpOptions, *, secrets: Secrets | None = None,
                 service: str = ""):
        self.options, self.service = options, service
        self._where = where(options.url)
        self._pattern = re.compile(options.body_match) if options.body_match else None
        self._ssl = ssl_setting(options.verify_tls, options.ca_file)
        headers = dict(options.headers)
        if options.secret_headers:
            reader = secrets or Secrets()
            headers.update({k: reader.reveal(ref).strip()
                            for k, ref in options.secret_headers.items()})
        self._headers = headers

    def _fail(self, at: float, start: float, why: str) -> Sample:
        return failed(self.service, at, start, f"{self.options.method} {self._where}: {why}")

    async def check(self) -> Sample:
        opts = self.options
        session = self._open_session()
        at, start = time.time(), time.monotonic()
        try:
            async with asyncio.timeout(opts.timeout):
                async with session.request(
                    opts.method, opts.url, headers=self._headers, ssl=self._ssl,
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    location = resp.headers.get("Location", "")
                    body = await read_body(resp.content, opts.max_body) \
                        if opts.method != "HEAD" else b""
        except Exception as exc:
            return self._fail(at, start, describe_http_error(exc, timeout=opts.timeout))
        latency = time.monotonic() - start
        if opts.expect_status:
            accepted = status in opts.expect_status
        else:
            accepted = 200 <= status < (400 if opts.accept_redirects else 300)
        if not accepted:
            return self._fail(at, start, self._unexpected(status, location))
        if self._pattern is not None and not self._pattern.search(
                body.decode("utf-8", "replace")):
            read = f" (first {len(body)} bytes read; raise maxBody to read more)" \
                if len(body) >= opts.max_body else ""
            return self._fail(at, start, f"body does not match {opts.body_match!r}{read}")
        if opts.latency_budget is not None and latency > opts.latency_budget:
            return self._fail(at, start, f"slow: {latency * 1000:.0f} ms > budget "
                                         f"{opts.latency_budget * 1000:.0f} ms")
        return Sample(self.service, True, at, latency=latency,
                      detail=f"{opts.method} {self._where}: {status}")

    def _unexpected(self, status: int, location: str) -> str:
        opts = self.options
        if opts.expect_status:
            return f"status {status}, expected {','.join(map(str, opts.expect_status))}"
        want = "2xx or 3xx" if opts.accept_redirects else "2xx"
        if not 300 <= status < 400 or opts.accept_redirects:
            return f"status {status}, expected {want}"
        target = ""
        if location:
            try:
                target = f" (redirect to {where(urljoin(opts.url, location))})"
            except ValueError:
                target = " (redirect)"
        return (f"status {status}{target}, expected {want}; set acceptRedirects: true "
                "if a redirect means healthy")

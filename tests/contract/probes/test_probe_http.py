"""HTTP and TCP probes against real loopback servers: every bad input is a failed sample
with a clear reason, bounded by the timeout, and secrets never reach the detail."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller import registry
from controller.model import Sample
from controller.probes.tcp import TcpProbe
from controller.secrets import Secrets


@pytest.fixture
def backend(http_backend: Any) -> Any:
    return http_backend


def probe(options: dict[str, Any], **extra: Any) -> Any:
    return registry.build("probe", "http", options, secrets=Secrets(), service="web", **extra)


def check(p: Any, times: int = 1) -> list[Sample]:
    async def run() -> list[Sample]:
        try:
            return [await p.check() for _ in range(times)]
        finally:
            await p.aclose()
    return asyncio.run(run())


def test_ok_with_status_and_body_match(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/ok", "bodyMatch": r"version \d+"}))
    assert s.ok and s.service == "web"
    assert s.latency is not None and s.latency >= 0
    assert s.detail.endswith(": 200")


def test_500_is_a_failure_naming_the_status(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/status/500"}))
    assert not s.ok
    assert s.detail.endswith("status 500, expected 2xx")


def test_expected_status_list(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/status/404", "expectStatus": [404]}))
    assert s.ok


def test_body_mismatch_is_a_failure(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/ok", "bodyMatch": "maintenance"}))
    assert not s.ok and "body does not match 'maintenance'" in s.detail


def test_hanging_server_is_a_failure_bounded_by_the_timeout(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/hang", "timeout": "300ms"}))
    assert not s.ok and "timed out after 0.3 s" in s.detail


def test_over_latency_budget_is_a_failure(backend: Any) -> None:
    [s] = check(probe({"url": f"{backend.url}/slow?s=0.2", "latencyBudget": "50ms"}))
    assert not s.ok and "slow:" in s.detail and "budget 50 ms" in s.detail


def test_connection_refused(dead_port: int) -> None:
    [s] = check(probe({"url": f"http://127.0.0.1:{dead_port}/"}))
    assert not s.ok and "connection refused" in s.detail


def test_unresolvable_host() -> None:
    [s] = check(probe({"url": "http://no-such-host.invalid/", "timeout": "3s"}))
    assert not s.ok and "cannot resolve host" in s.detail


def test_garbage_http_is_a_failure(garbage_port: int) -> None:
    [s] = check(probe({"url": f"http://127.0.0.1:{garbage_port}/", "timeout": "2s"}))
    assert not s.ok
    assert "invalid HTTP response" in s.detail or "without a complete response" in s.detail


def test_tls_untrusted_certificate_is_a_failure(tls_backend: Any) -> None:
    tls = tls_backend
    [bad] = check(probe({"url": f"{tls.url}/ok"}))
    [pinned] = check(probe({"url": f"{tls.url}/ok", "caFile": str(tls.cert)}))
    [unverified] = check(probe({"url": f"{tls.url}/ok", "verifyTls": False}))
    assert not bad.ok and "TLS certificate rejected" in bad.detail
    assert pinned.ok and unverified.ok


def test_connection_is_reused_across_checks(backend: Any) -> None:
    samples = check(probe({"url": f"{backend.url}/ok"}), times=5)
    assert all(s.ok for s in samples)


def test_secret_header_is_sent_but_never_shown(backend: Any, dead_port: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "Bearer s3cret-token-value")
    p = probe({"url": f"{backend.url}/echo-auth",
               "secretHeaders": {"Authorization": {"fromEnv": "PROBE_TOKEN"}}})
    [s] = check(p)
    assert s.ok and backend.seen_auth[-1] == "Bearer s3cret-token-value"
    # a URL password is not shown either
    [refused] = check(probe({"url": f"http://user:pw-in-url@127.0.0.1:{dead_port}/x?k=v"}))
    assert "pw-in-url" not in refused.detail and "k=v" not in refused.detail
    assert "s3cret" not in s.detail


def test_options_are_validated_with_clear_messages() -> None:
    with pytest.raises(Exception, match="url must be http"):
        registry.parse_options("probe", "http", {"url": "ftp://x"})
    with pytest.raises(Exception, match="bodyMatch is not a valid regular expression"):
        registry.parse_options("probe", "http", {"url": "http://x", "bodyMatch": "("})
    with pytest.raises(Exception, match="Extra inputs"):
        registry.parse_options("probe", "http", {"url": "http://x", "expect_statuses": []})


def test_tcp_probe_connects_and_reports_refusal(backend: Any, dead_port: int) -> None:
    up = TcpProbe(TcpProbe.Options(host="127.0.0.1", port=backend.port), service="db")
    down = TcpProbe(TcpProbe.Options(host="127.0.0.1", port=dead_port), service="db")
    ok, refused = asyncio.run(_both(up.check(), down.check()))
    assert ok.ok and "connected" in ok.detail
    assert not refused.ok and "connection refused" in refused.detail


def test_tcp_unroutable_is_bounded_by_timeout() -> None:
    # 192.0.2.1 (TEST-NET-1) is never routed: a timeout, or an at-once rejection where a
    # firewall answers for it (this sandbox rejects); either way a failure with a reason
    p = TcpProbe(TcpProbe.Options.model_validate(
        {"host": "192.0.2.1", "port": 9, "timeout": "300ms"}), service="x")
    s = asyncio.run(p.check())
    assert not s.ok
    assert any(why in s.detail for why in ("timed out after 0.3 s", "unreachable", "refused"))


async def _both(a: Any, b: Any) -> list[Sample]:
    return list(await asyncio.gather(a, b))

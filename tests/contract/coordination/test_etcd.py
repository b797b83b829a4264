"""The etcd coordinator against a real etcd: one holder per plan across hosts, a token that
only grows, expiry, release, partitions, failover between endpoints, TLS and logins.

Each "host" is its own `EtcdCoordinator` (its own lease and connection), as two
`failoverctl` processes on two machines would have.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from controller.coordination.etcd import EtcdCoordinator
from controller.drill.servers.base import free_port
from controller.drill.servers.etcd import EtcdServer

EtcdFactory = Callable[..., EtcdCoordinator]  # the `etcd_coordinator` fixture


def _wait_for(acquire: object, *, within: float) -> tuple[int, float]:
    """Call `acquire()` until it returns a token: (token, seconds it took)."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        token = acquire()  # type: ignore[operator]
        if token is not None:
            return int(token), time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"no token within {within} s")


def test_one_of_two_hosts_holds_the_plan_and_the_other_takes_it_after_release(
        etcd: EtcdServer, etcd_coordinator: EtcdFactory) -> None:
    host_a, host_b = etcd_coordinator(etcd.url), etcd_coordinator(etcd.url)
    first = host_a.acquire(holder="host-a", ttl=10)
    assert first is not None
    assert host_b.acquire(holder="host-b", ttl=10) is None
    assert host_a.acquire(holder="host-a", ttl=10) == first  # renewal: same token
    assert host_b.holder() == ("host-a", first)

    host_a.release(holder="host-a")  # revokes the lease: the key goes at once
    second = host_b.acquire(holder="host-b", ttl=10)
    assert second is not None and second > first
    assert host_a.acquire(holder="host-a", ttl=10) is None
    host_b.release(holder="host-b")


def test_an_expired_lease_passes_to_the_other_host_with_a_larger_token(
        etcd: EtcdServer, etcd_coordinator: EtcdFactory) -> None:
    host_a, host_b = etcd_coordinator(etcd.url), etcd_coordinator(etcd.url)
    first = host_a.acquire(holder="host-a", ttl=1)
    assert first is not None
    # host-a stops renewing (hangs, or is cut off): etcd expires its lease and key
    second, waited = _wait_for(lambda: host_b.acquire(holder="host-b", ttl=1), within=5)
    assert second > first
    assert waited < 3  # TTL 1 s plus etcd's expiry sweep, not "never"
    # host-a comes back: its lease is gone and the key is host-b's, so it must not act
    assert host_a.acquire(holder="host-a", ttl=1) is None
    host_b.release(holder="host-b")


def test_renewals_keep_the_lease_past_its_ttl_with_the_same_token(
        etcd: EtcdServer, etcd_coordinator: EtcdFactory) -> None:
    host_a, host_b = etcd_coordinator(etcd.url), etcd_coordinator(etcd.url)
    token = host_a.acquire(holder="host-a", ttl=1)
    assert token is not None
    until = time.monotonic() + 2.5  # well past the 1 s TTL
    while time.monotonic() < until:
        assert host_a.acquire(holder="host-a", ttl=1) == token  # every ttl/3, as the engine
        assert host_b.acquire(holder="host-b", ttl=1) is None
        time.sleep(0.3)
    host_a.release(holder="host-a")


def test_racing_hosts_get_exactly_one_token(etcd: EtcdServer,
                                            etcd_coordinator: EtcdFactory) -> None:
    hosts = [etcd_coordinator(etcd.url) for _ in range(8)]
    results: dict[int, int | None] = {}
    start = threading.Barrier(len(hosts))

    def contend(i: int) -> None:
        start.wait()
        results[i] = hosts[i].acquire(holder=f"host-{i}", ttl=10)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    winners = [i for i, token in results.items() if token is not None]
    assert len(results) == len(hosts) and len(winners) == 1
    hosts[winners[0]].release(holder=f"host-{winners[0]}")


def test_a_partition_raises_connection_error_within_the_http_timeout(
        etcd: EtcdServer, etcd_coordinator: EtcdFactory) -> None:
    host_a, host_b = etcd_coordinator(etcd.url), etcd_coordinator(etcd.url)
    assert host_a.acquire(holder="host-a", ttl=3) is not None
    assert etcd.pid is not None
    os.kill(etcd.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        for host, holder in ((host_a, "host-a"), (host_b, "host-b")):
            began = time.monotonic()
            with pytest.raises(ConnectionError) as caught:
                host.acquire(holder=holder, ttl=3)  # HTTP timeout min(3/3, 2) = 1 s
            took = time.monotonic() - began
            assert took < 2.5, f"{holder} waited {took:.1f} s for an unreachable etcd"
            assert etcd.url in str(caught.value)
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
    etcd.wait_ready(10)


def test_an_unreachable_endpoint_is_named_and_the_next_one_is_used(
        etcd: EtcdServer, etcd_coordinator: EtcdFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConnectionError) as caught:
        etcd_coordinator(dead).acquire(holder="host-a", ttl=3)
    assert dead in str(caught.value) and "refused" in str(caught.value).lower()

    both = etcd_coordinator(dead, etcd.url)
    token = both.acquire(holder="host-a", ttl=3)
    assert token is not None and both.acquire(holder="host-a", ttl=3) == token
    both.release(holder="host-a")


def test_tls_and_a_login_work_and_a_wrong_password_is_named_but_never_shown(
        etcd_coordinator: EtcdFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    password, wrong = "s3cret-etcd-root-pw", "wr0ng-password-value"
    with EtcdServer(fast=True, tls=True) as server:
        server.enable_auth(password)
        monkeypatch.setenv("ETCD_TEST_PASSWORD", password)
        monkeypatch.setenv("ETCD_WRONG_PASSWORD", wrong)
        login = {"caFile": str(server.ca_file), "username": "root"}

        host = etcd_coordinator(server.url, **login,
                                password={"fromEnv": "ETCD_TEST_PASSWORD"})
        token = host.acquire(holder="host-a", ttl=5)
        assert token is not None and host.acquire(holder="host-a", ttl=5) == token
        host._auth = (0, "expired.1")  # etcd forgot the token (restart, TTL): log in again
        assert host.acquire(holder="host-a", ttl=5) == token

        rejected = etcd_coordinator(server.url, **login,
                                    password={"fromEnv": "ETCD_WRONG_PASSWORD"})
        with pytest.raises(ConnectionError) as caught:
            rejected.acquire(holder="host-b", ttl=5)
        message = str(caught.value)
        assert "login as root rejected" in message
        assert "environment variable ETCD_WRONG_PASSWORD" in message
        assert wrong not in message and password not in message

        anonymous = etcd_coordinator(server.url, caFile=str(server.ca_file))
        with pytest.raises(ConnectionError, match="requires authentication"):
            anonymous.acquire(holder="host-c", ttl=5)

        unverified = etcd_coordinator(server.url)  # system CAs do not know the test CA
        with pytest.raises(ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            unverified.acquire(holder="host-d", ttl=5)
        host.release(holder="host-a")

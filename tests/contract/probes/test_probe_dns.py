"""DNS probe against a real (in-test, authoritative, UDP) DNS server built on dnspython.

BIND is run by the DNS-provider contract suite; this suite needs only answers, NXDOMAIN,
SERVFAIL and silence, which the small server in conftest.py gives deterministically.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller import registry
from controller.model import Sample
from controller.secrets import Secrets


def check(dns_server: Any, **options: Any) -> Sample:
    opts = {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "500ms",
            **options}
    probe = registry.build("probe", "dns", opts, secrets=Secrets(), service="web")
    return asyncio.run(probe.check())


def test_answer_matches_expected(dns_server: Any) -> None:
    s = check(dns_server, name="www.example.test", expect=["192.0.2.10"])
    assert s.ok and "192.0.2.10" in s.detail


def test_wrong_answer_is_a_failure_naming_both(dns_server: Any) -> None:
    s = check(dns_server, name="www.example.test", expect=["198.51.100.10"])
    assert not s.ok
    assert "answered 192.0.2.10; expected 198.51.100.10" in s.detail


def test_all_versus_any(dns_server: Any) -> None:
    assert not check(dns_server, name="api.example.test", expect=["192.0.2.20"]).ok
    assert check(dns_server, name="api.example.test", expect=["192.0.2.20"], match="any").ok
    assert check(dns_server, name="api.example.test",
                 expect=["192.0.2.21", "192.0.2.20"]).ok


def test_other_record_types(dns_server: Any) -> None:
    assert check(dns_server, name="www.example.test", type="txt",
                 expect=['"site=dc-a"']).ok


def test_nxdomain_and_no_answer(dns_server: Any) -> None:
    gone = check(dns_server, name="missing.example.test")
    assert not gone.ok and "NXDOMAIN" in gone.detail
    empty = check(dns_server, name="www.example.test", type="AAAA")
    assert not empty.ok and "no answer" in empty.detail


def test_servfail(dns_server: Any) -> None:
    dns_server.mode = "servfail"
    s = check(dns_server, name="www.example.test")
    assert not s.ok and "no nameserver answered" in s.detail


def test_silent_server_is_bounded_by_the_timeout(dns_server: Any) -> None:
    dns_server.mode = "silent"
    s = check(dns_server, name="www.example.test", timeout="300ms")
    assert not s.ok and "timed out after 0.3 s" in s.detail


def test_unknown_record_type_is_a_plan_error() -> None:
    with pytest.raises(Exception, match="unknown DNS record type"):
        registry.parse_options("probe", "dns", {"name": "x", "type": "NOPE"})

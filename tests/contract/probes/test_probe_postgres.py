"""PostgreSQL probe through the real psql client: failure paths against real sockets.

What psql reports when the server is absent or hangs, and that a hung check is killed,
not leaked. The live primary + streaming standby cases are in test_probe_postgres_live.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from controller import registry
from controller.model import Sample
from controller.probes.postgres import _psql_error, find_psql
from controller.secrets import Secrets


def check(**options: Any) -> Sample:
    probe = registry.build("probe", "postgres", {"host": "127.0.0.1", **options},
                           secrets=Secrets(), service="orders-db")
    return asyncio.run(probe.check())


def psql_children() -> list[int]:
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            comm = stat.read_text().split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and comm == "psql":
            found.append(int(stat.parent.name))
    return found


def test_psql_is_found() -> None:
    assert find_psql() is not None


def test_refused_connection_names_the_reason(dead_port: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_PROBE_PASSWORD", "pg-secret-password")
    s = check(port=dead_port, password={"fromEnv": "PG_PROBE_PASSWORD"})
    assert not s.ok
    assert "Connection refused" in s.detail and f"port {dead_port}" in s.detail
    assert "pg-secret-password" not in s.detail


def test_hung_server_is_bounded_and_psql_is_killed(mute_port: int) -> None:
    s = check(port=mute_port, timeout="300ms")
    assert not s.ok and "timed out after 0.3 s" in s.detail
    assert psql_children() == []


def test_missing_psql_is_a_failed_sample(dead_port: int) -> None:
    s = check(port=dead_port, psql="/nonexistent/psql")
    assert not s.ok and "no such file" in s.detail.lower()


def test_psql_error_text_is_shortened() -> None:
    assert _psql_error("psql:<stdin>:1: ERROR:  relation \"x\" does not exist\n"
                       "LINE 1: SELECT * FROM x;\n") == 'ERROR:  relation "x" does not exist'
    assert _psql_error('psql: error: connection to server at "h" (1.2.3.4), port 5 failed: '
                       "Connection refused").startswith("connection to server")
    assert _psql_error("") == "psql failed without a message"


def test_options_forbid_unknown_fields() -> None:
    with pytest.raises(Exception, match="Extra inputs"):
        registry.parse_options("probe", "postgres", {"hostname": "x"})
    opts = registry.parse_options("probe", "postgres", {"standby": "b", "maxLag": "30s"})
    assert opts.max_lag == 30.0  # type: ignore[attr-defined]

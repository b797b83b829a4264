"""PostgreSQL probe against a live primary and a streaming standby (real servers).

The standby is made with `pg_basebackup -R` and names itself by `cluster_name`, which the
walreceiver uses as its application_name: what the probe's `standby:` option looks for in
the primary's `pg_stat_replication`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.drill.servers.postgres import PostgresServer, as_user, give_to, pg_tool
from tests.contract.probes.test_probe_postgres import check


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    base = Path(tempfile.mkdtemp(prefix="probe-pg-"))
    base.chmod(0o755)
    primary = PostgresServer(base / "primary").init().start()
    standby = PostgresServer(base / "standby", settings={"cluster_name": "'replica1'"})
    try:
        give_to(standby.base, mode=0o755)
        give_to(standby.data)
        subprocess.run(as_user([pg_tool("pg_basebackup"), "-h", str(primary.sock), "-p",
                                str(primary.port), "-U", "postgres", "-D", str(standby.data),
                                "-R", "-X", "stream", "-c", "fast"]),
                       check=True, capture_output=True)
        standby.init().start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)


def _until_streaming(port: int) -> None:
    for _ in range(100):
        if check(port=port, standby="replica1").ok:
            return
        time.sleep(0.1)


def test_select_one_passes_and_a_bad_query_fails_with_the_error(
        pair: tuple[PostgresServer, PostgresServer]) -> None:
    primary, _ = pair
    ok = check(port=primary.port)
    assert ok.ok and ok.detail.endswith("ok") and ok.latency is not None
    bad = check(port=primary.port, query="SELECT * FROM no_such_table")
    assert not bad.ok and 'relation "no_such_table" does not exist' in bad.detail
    wrong = check(port=primary.port, query="SELECT 2", expect="1")
    assert not wrong.ok and "expected '1'" in wrong.detail


def test_streaming_standby_is_checked_by_name_and_lag(
        pair: tuple[PostgresServer, PostgresServer]) -> None:
    primary, _ = pair
    _until_streaming(primary.port)
    s = check(port=primary.port, standby="replica1", maxLag="30s")
    assert s.ok, s.detail
    assert "standby 'replica1' lag" in s.detail and s.value is not None and s.value < 30
    absent = check(port=primary.port, standby="replica9")
    assert not absent.ok and "standby 'replica9' is not connected" in absent.detail


def test_a_stopped_standby_fails_the_probe(
        pair: tuple[PostgresServer, PostgresServer]) -> None:
    primary, standby = pair
    _until_streaming(primary.port)
    standby.stop()
    try:
        s = check(port=primary.port, standby="replica1")
        for _ in range(100):  # the walsender goes away a moment after the standby stops
            if not s.ok:
                break
            time.sleep(0.05)
            s = check(port=primary.port, standby="replica1")
        assert not s.ok and "replica1" in s.detail
    finally:
        standby.start()

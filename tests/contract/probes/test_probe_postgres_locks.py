"""PostgreSQL probe behind a lock, on a real server (issue 21, item 8).

During a long migration a session holds ACCESS EXCLUSIVE on the probed table. Every probe
round then waits for the lock; when the probe gives up, killing psql does not end the
server backend (it waits on the lock, not on the socket). Before the fix each round left
one such backend: in an hour of 10-second rounds, 360 connections — `max_connections` on
the primary. The probe now sets `lock_timeout` and `statement_timeout` from the time it is
given, so the server ends the statement itself just before the probe gives up.

The rounds run through the real `ProbeScheduler` with the service's timeout (1 s) shorter
than the probe option's default (5 s): the server-side bounds follow the shorter one.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import registry
from controller.drill.processes import stop_pid
from controller.drill.servers.postgres import PostgresServer, pg_tool
from controller.probes.scheduler import ProbeScheduler, Target
from controller.secrets import Secrets


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="probe-pg-lock-"))
    base.chmod(0o755)
    pg = PostgresServer(base / "pg").init().start()
    try:
        pg.psql("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


class LockHolder:
    """A psql session that holds ACCESS EXCLUSIVE on a table until `release`."""

    def __init__(self, pg: PostgresServer, table: str):
        self.proc = subprocess.Popen(
            [pg_tool("psql"), "-X", "-q", "-A", "-t", "-h", str(pg.sock), "-p", str(pg.port),
             "-U", "postgres", "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; "
                              "SELECT 'locked';\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == "locked", (line, self.proc.stderr.read() if self.proc.stderr else "")

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("ROLLBACK;\n\\q\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc.pid)


def probe_backends(pg: PostgresServer) -> tuple[int, int]:
    """(backends of the probe, of which waiting on a lock) in pg_stat_activity."""
    row = pg.psql("SELECT count(*) || ',' || count(*) FILTER (WHERE wait_event_type = 'Lock') "
                  "FROM pg_stat_activity WHERE application_name = 'failover-probe'")
    total, waiting = row.split(",")
    return int(total), int(waiting)


def test_probe_rounds_behind_an_exclusive_lock_leave_no_waiting_backends(
        server: PostgresServer) -> None:
    probe = registry.build("probe", "postgres",
                           {"host": "127.0.0.1", "port": server.port,
                            "query": "SELECT count(*) FROM orders", "expect": "2"},
                           secrets=Secrets(), service="orders-db")
    sched = ProbeScheduler([Target("orders-db", [probe], interval=1.0, timeout=1.0)])
    holder = LockHolder(server, "orders")
    try:
        samples = []
        for _ in range(10):
            samples += asyncio.run(sched.run_once())
        assert all(not s.ok for s in samples)
        # no pile-up: every round's backend is gone (at most the last one still leaving)
        deadline = time.monotonic() + 3
        while (counts := probe_backends(server)) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counts == (0, 0), f"probe backends left (total, waiting on a lock): {counts}"
        # and the probe said why: the server's own lock timeout, not just "timed out"
        assert any("lock timeout" in s.detail for s in samples), [s.detail for s in samples]
    finally:
        holder.release()
    [after] = asyncio.run(sched.run_once())
    assert after.ok, after.detail


def test_the_timeouts_follow_the_probe_timeout_and_a_slow_query_is_cancelled(
        server: PostgresServer) -> None:
    probe = registry.build("probe", "postgres",
                           {"host": "127.0.0.1", "port": server.port, "timeout": "1s",
                            "query": "SELECT pg_sleep(30)", "expect": None},
                           secrets=Secrets(), service="orders-db")
    started = time.monotonic()
    s = asyncio.run(probe.check())
    assert not s.ok and "statement timeout" in s.detail, s.detail
    assert time.monotonic() - started < 1.5
    assert probe_backends(server) == (0, 0)


def test_the_query_still_runs_as_written_inside_the_bounded_transaction(
        server: PostgresServer) -> None:
    """The probe wraps the query (BEGIN; SET LOCAL ...; query; COMMIT): a trailing comment,
    a trailing semicolon or a write must all still work, and the settings not linger."""
    def run(query: str, expect: str | None) -> str:
        probe = registry.build("probe", "postgres",
                               {"host": "127.0.0.1", "port": server.port, "query": query,
                                "expect": expect}, secrets=Secrets(), service="orders-db")
        s = asyncio.run(probe.check())
        assert s.ok, s.detail
        return s.detail

    run("SELECT count(*) FROM orders -- rows in the table", "2")
    run("SELECT count(*) FROM orders;", "2")
    run("SELECT current_setting('lock_timeout') <> '0'", "t")
    run("INSERT INTO orders VALUES (3) RETURNING id", "3")
    assert server.psql("SELECT count(*) FROM orders") == "3"  # committed
    server.psql("DELETE FROM orders WHERE id = 3")

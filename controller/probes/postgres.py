"""PostgreSQL probe: a real query (`SELECT 1` by default) and, optionally, replication lag.

It runs the query through `psql` (the PostgreSQL client every database host and the
controller image already have) as an asyncio subprocess, rather than adding a driver
dependency: a probe runs a handful of times a minute per database, so a process start
(~10 ms) is cheap, and psql speaks every authentication method and TLS mode the server
may demand. The password comes from a SecretRef and reaches psql only through its
environment (PGPASSWORD), never its command line, and is redacted from any error text.

With `standby:` (a standby's application_name) the probe also asks the primary's
`pg_stat_replication` for that standby: not streaming is a failure, and its replay lag
is the sample's `value` (seconds), failing above `maxLag`. With `expect: null` a numeric
first result of `query` is reported as `value`, so a SQL count can feed a business signal.
On timeout the psql process is killed, never left behind.

Killing psql does not end its server backend while that backend waits for a lock (it
notices the closed socket only when it next talks to it): behind a migration's ACCESS
EXCLUSIVE lock every round would leave one waiting connection until `max_connections` is
reached on the primary. So the checks run in one transaction that first sets `lock_timeout` and
`statement_timeout` (SET LOCAL: nothing outlives the transaction, even through a pooling
proxy) a little shorter than the time the probe is given — its `timeout`, or the service's
when the scheduler gives it less (`limit_timeout`) — and the server ends the statement
itself, reporting "canceling statement due to lock timeout".

`psql_command` is how the controller starts psql, here and for the `database` backend
(`controller.db.postgres`): one place for its flags and its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import math
import os
import shutil
import time

from pydantic import BaseModel, ConfigDict, Field

from controller.model import Sample
from controller.plan import Duration
from controller.probes import Probe
from controller.probes.tcp import describe_error, failed, short
from controller.secrets import SecretRef, Secrets

_LAG_MARK = "__failover_probe_lag__"
NO_PSQL = ("psql not found; install the PostgreSQL client (apt-get install -y "
           "--no-install-recommends postgresql-client)")


def find_psql() -> str | None:
    found = shutil.which("psql")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)
    return candidates[0] if candidates else None


def psql_command(psql: str | None, *, host: str, port: int, user: str, database: str,
                 password: str | None, sslmode: str | None, connect_timeout: float,
                 app: str) -> tuple[list[str], dict[str, str]]:
    """psql's argv (no psqlrc, quiet, unaligned rows of '|'-separated columns, stopping at
    the first error; the statements are the caller's to add) and its environment: none
    of this process's PG* variables, the password only there (never on the command
    line). Raises FileNotFoundError when there is no psql."""
    found = psql or find_psql()
    if found is None:
        raise FileNotFoundError(NO_PSQL)
    argv = [found, "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", host,
            "-p", str(port), "-U", user, "-d", database]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCONNECT_TIMEOUT=str(max(2, math.ceil(connect_timeout))), PGAPPNAME=app)
    if password is not None:
        env["PGPASSWORD"] = password
    if sslmode:
        env["PGSSLMODE"] = sslmode
    return argv, env


class PostgresOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    host: str = Field("localhost", description="host name, address or socket directory")
    port: int = Field(5432, ge=1, le=65535)
    database: str = "postgres"
    user: str = "postgres"
    password: SecretRef | None = None
    sslmode: str | None = None
    query: str = "SELECT 1"
    expect: str | None = Field("1", description="expected first result; null = any result")
    standby: str | None = Field(None, description="application_name of a standby to check")
    max_lag: Duration | None = Field(None, alias="maxLag", description="fail above this lag")
    timeout: Duration = 5.0
    psql: str | None = Field(None, description="path to psql; default: found on PATH")


class PostgresProbe(Probe):
    """Run a query (and a replication-lag check) against PostgreSQL through psql."""

    Options = PostgresOptions

    def __init__(self, options: PostgresOptions, *, secrets: Secrets | None = None,
                 service: str = ""):
        self.options, self.service = options, service
        self._password = ((secrets or Secrets()).reveal(options.password).strip()
                          if options.password is not None else None)
        self._label = f"postgres {options.host}:{options.port}/{options.database}"
        self.timeout = options.timeout

    def limit_timeout(self, seconds: float) -> None:
        """The scheduler gives this probe at most `seconds` (the service's timeout)."""
        self.timeout = min(self.options.timeout, seconds)

    def server_timeouts_ms(self) -> tuple[int, int]:
        """(lock_timeout, statement_timeout): the server ends the statement a moment (a
        fifth of the budget, at most 1 s) before the probe gives up on psql; a lock wait a
        little sooner, so that the reason given is the lock."""
        budget = self.timeout
        statement = max(2, int(1000 * (budget - min(0.2 * budget, 1.0))))
        return max(1, statement * 9 // 10), statement

    def _command(self) -> tuple[list[str], dict[str, str], str]:
        opts = self.options
        argv, env = psql_command(opts.psql, host=opts.host, port=opts.port, user=opts.user,
                                 database=opts.database, password=self._password,
                                 sslmode=opts.sslmode, connect_timeout=self.timeout,
                                 app="failover-probe")
        # SET LOCAL in a transaction, not PGOPTIONS (pgbouncer refuses that startup
        # parameter) nor a session SET (a transaction-pooling proxy would hand the setting
        # on to other clients' server connection)
        lock_ms, statement_ms = self.server_timeouts_ms()
        script = (f"BEGIN;\nSET LOCAL lock_timeout = {lock_ms};\n"
                  f"SET LOCAL statement_timeout = {statement_ms};\n"
                  + opts.query.rstrip().rstrip(";") + "\n;\n")  # safe after a -- comment
        if opts.standby is not None:
            argv += ["-v", f"standby={opts.standby}"]
            script += (
                f"\\echo {_LAG_MARK}\n"
                "SELECT state || '|' || COALESCE(EXTRACT(EPOCH FROM replay_lag)::text, '0') "
                "FROM pg_stat_replication WHERE application_name = :'standby';\n"
            )
        return [*argv, "-f", "-"], env, script + "COMMIT;\n"

    def _fail(self, at: float, start: float, why: str) -> Sample:
        return failed(self.service, at, start, f"{self._label}: {why}")

    async def check(self) -> Sample:
        opts = self.options
        at, start = time.time(), time.monotonic()
        proc: asyncio.subprocess.Process | None = None
        try:
            argv, env, script = self._command()
            async with asyncio.timeout(self.timeout):
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate(script.encode())
        except Exception as exc:
            return self._fail(at, start, describe_error(exc, timeout=self.timeout))
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
        latency = time.monotonic() - start
        if proc.returncode != 0:
            return self._fail(at, start, _psql_error(err.decode("utf-8", "replace")))
        text, _, lag_text = out.decode("utf-8", "replace").partition(_LAG_MARK)
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if opts.expect is not None and first != opts.expect:
            return self._fail(at, start, f"query returned {first[:60]!r}, "
                                         f"expected {opts.expect!r}")
        value = _number(first) if opts.expect is None else None
        detail = f"{self._label}: ok"
        if opts.standby is not None:
            row = next((line.strip() for line in lag_text.splitlines() if line.strip()), "")
            if not row:
                return self._fail(at, start, f"standby {opts.standby!r} is not connected")
            state, _, lag_s = row.partition("|")
            if state != "streaming":
                return self._fail(at, start, f"standby {opts.standby!r} is {state}, "
                                             "not streaming")
            value = _number(lag_s) or 0.0
            if opts.max_lag is not None and value > opts.max_lag:
                return Sample(self.service, False, at, latency=latency, value=value,
                              detail=short(f"{self._label}: standby {opts.standby!r} lags "
                                           f"{value:.1f} s > {opts.max_lag:g} s"))
            detail += f"; standby {opts.standby!r} lag {value:.2f} s"
        return Sample(self.service, True, at, latency=latency, detail=detail, value=value)


def _psql_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "psql failed without a message"
    # psql prefixes "psql: error: " (connection) or "psql:<stdin>:1: ERROR:" (query)
    message = lines[0]
    for prefix in ("psql: error: ", "psql:<stdin>:"):
        if message.startswith(prefix):
            message = message[len(prefix):]
    return message.split(": ", 1)[1] if message[:1].isdigit() and ": " in message else message


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None

"""Real servers for the backup contract tests, started once per session and stopped by PID:
moto's S3 server, a source PostgreSQL 15 with an `orders` table (and WAL archiving into
a pgBackRest repository), and an sshd on loopback that the remote restore goes through;
and the data a restore with `overwrite` replaces: a stopped cluster planted at the target
(`OldCluster`), fingerprinted, started again afterwards to read its row.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from controller.backups.s3 import S3BackupStore, S3StoreOptions
from controller.drill.servers.moto import MotoServer
from controller.drill.servers.postgres import (
    PostgresServer,
    archive_to_pgbackrest,
    as_user,
    give_to,
)
from controller.drill.servers.sshd import SshServer
from controller.secrets import Secrets

ROWS = 20000
_COUNTER = itertools.count()
KEY_ENV = "FAILOVER_TEST_BACKUP_KEY"
VALIDATION = [
    {"name": "orders row count", "sql": "SELECT count(*) FROM orders", "expect": str(ROWS)},
    {"name": "business: revenue", "sql": "SELECT sum(amount) FROM orders", "min": 1},
]


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="backups-contract-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with MotoServer() as moto:
        yield moto.endpoint


@pytest.fixture(scope="session")
def source_pg(workdir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(workdir / "source")
    archive_to_pgbackrest(server, workdir / "pgbackrest")
    server.init().start()
    try:
        server.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL); "
                    f"INSERT INTO orders SELECT g, g % 97 + 1 FROM generate_series(1, {ROWS}) g")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pgbackrest_conf(source_pg: PostgresServer, workdir: Path) -> Path:
    return workdir / "pgbackrest" / "pgbackrest.conf"  # written with the source's settings


@pytest.fixture(scope="session")
def stanza(source_pg: PostgresServer, pgbackrest_conf: Path) -> str:
    import subprocess

    subprocess.run(as_user(["pgbackrest", f"--config={pgbackrest_conf}", "--stanza=main",
                            "stanza-create"]), check=True, capture_output=True)
    return "main"


@pytest.fixture(scope="session")
def sshd(workdir: Path) -> Iterator[SshServer]:
    server = SshServer(workdir / "sshd").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backup_key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture
def store_options(s3_endpoint: str, backup_key: str, request: pytest.FixtureRequest
                  ) -> Iterator[dict[str, Any]]:
    """A fresh bucket per test, emptied and removed after it: moto keeps every object in
    this process's memory, shared by every moto server the session starts."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"bk-{next(_COUNTER)}-{name}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    os.environ["FAILOVER_TEST_AWS_ID"] = "AKIDBACKUPTEST01"
    os.environ["FAILOVER_TEST_AWS_SECRET"] = "backup-test-secret-value"
    yield {"bucket": bucket, "prefix": "dc-a/orders", "endpointUrl": s3_endpoint,
           "accessKeyId": {"fromEnv": "FAILOVER_TEST_AWS_ID"},
           "secretAccessKey": {"fromEnv": "FAILOVER_TEST_AWS_SECRET"},
           "encryptionKey": {"fromEnv": KEY_ENV}}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_store(store_options: dict[str, Any], journal: Any) -> S3BackupStore:
    return S3BackupStore(S3StoreOptions.model_validate(store_options), secrets=Secrets(),
                         audit=journal.audit)


@pytest.fixture
def places(workdir: Path, request: pytest.FixtureRequest) -> Path:
    """A per-test directory the postgres OS user can reach (tmp_path is root-only 0700)."""
    path = workdir / f"t{next(_COUNTER)}"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    path.parent.chmod(0o755)
    return path


OLD_NOTE = "the data before the restore"


def fingerprint(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under `path` (and `path` itself): mode, owner, size, mtime in ns, so
    "left exactly as it was" is checked entry by entry."""
    out = {}
    for entry in [path, *sorted(path.rglob("*"))]:
        st = entry.lstat()
        out[str(entry.relative_to(path))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return out


@dataclass
class OldCluster:
    """A stopped PostgreSQL 15 cluster at `path` holding one row (`OLD_NOTE`)."""

    path: Path

    def fingerprint(self) -> dict[str, tuple[int, int, int, int]]:
        return fingerprint(self.path)

    def read(self) -> str:
        """Start the old node where it is, read its row, stop it (by PID)."""
        server = PostgresServer(self.path.parent / f"old-run-{next(_COUNTER)}", data=self.path)
        give_to(server.base, mode=0o755)
        give_to(server.sock, mode=0o755)
        server.start()
        try:
            return server.psql("SELECT note FROM old_data")
        finally:
            server.stop()

    def leftovers(self) -> list[str]:
        """What a restore onto this target may use beside it (none may remain after one
        that failed): the side directory, the replaced directory, the marker."""
        return [p.name for p in self.path.parent.iterdir()
                if p.name.startswith(f"{self.path.name}.")]


@pytest.fixture(scope="session")
def old_template(workdir: Path) -> Path:
    server = PostgresServer(workdir / "old-template")
    server.init().start()
    try:
        server.psql(f"CREATE TABLE old_data (note text); INSERT INTO old_data VALUES "
                    f"('{OLD_NOTE}')")
    finally:
        server.stop()
    return server.data


@pytest.fixture
def old_cluster(old_template: Path) -> Callable[[Path], OldCluster]:
    """Plants a copy of the old cluster at a target path (its parents made reachable)."""

    def plant(path: Path) -> OldCluster:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o755)
        subprocess.run(["cp", "-a", str(old_template), str(path)], check=True)
        return OldCluster(path)

    return plant

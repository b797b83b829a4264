"""The backup world the restore faults and the SSH quoting test share (one per session):
moto's S3 server with a bucket, a source PostgreSQL 15 with an `orders` table, one
encrypted base backup of it in the bucket (marked verified: the verifier has its own
contract tests), and a real sshd on loopback with a pinned host key. Stopped by PID."""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.backups.s3 import S3BackupStore, S3StoreOptions
from controller.backups.take import take_basebackup
from controller.drill.servers.base import free_port
from controller.drill.servers.moto import MotoServer
from controller.drill.servers.postgres import PostgresServer
from controller.drill.servers.sshd import SshServer
from controller.plan import API_VERSION, FailoverPlan, parse_plan
from controller.secrets import Secrets

ROWS = 500
KEY_ENV = "RELIABILITY_BACKUP_KEY"
_N = itertools.count()


def make_plan(name: str, backends: list[dict[str, Any]], step: dict[str, Any]) -> FailoverPlan:
    return parse_plan({
        "apiVersion": API_VERSION, "kind": "FailoverPlan", "metadata": {"name": name},
        "spec": {
            "sites": {"primary": {"name": "dc-a"}, "backup": {"name": "dc-b"}},
            "services": [{"name": "web", "core": True,
                          "probes": [{"kind": "memory", "options": {"key": "dc-a"}}]}],
            "backends": [*backends, {"name": "im", "role": "notifier", "kind": "memory",
                                     "options": {"key": f"im-{name}"}}],
            "steps": [step],
            "notifications": [{"level": 1, "notifier": "im", "recipients": ["@all"]}],
        }})



@dataclass
class Backups:
    moto: MotoServer
    bucket: str
    source: PostgresServer
    base: Path
    sshd: SshServer
    key_file: Path
    known_hosts: Path

    def store_options(self, endpoint: str | None = None) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": "dc-a/orders",
                "endpointUrl": endpoint or self.moto.endpoint,
                "accessKeyId": {"fromEnv": "RELIABILITY_AWS_ID"},
                "secretAccessKey": {"fromEnv": "RELIABILITY_AWS_SECRET"},
                "encryptionKey": {"fromEnv": KEY_ENV}}

    def target(self, **options: Any) -> tuple[str, dict[str, Any]]:
        path = self.base / f"restore-{next(_N)}"
        path.mkdir(mode=0o755)
        return str(path / "data"), {"port": free_port(), "socketDir": str(path / "sock"),
                                    "validation": [{"name": "orders row count",
                                                    "sql": "SELECT count(*) FROM orders",
                                                    "expect": str(ROWS)}], **options}

    def plan(self, name: str, *, endpoint: str | None = None, host: str | None = None,
             ssh: dict[str, Any] | None = None, retries: int = 1,
             **target: Any) -> tuple[FailoverPlan, str, dict[str, Any]]:
        path, options = self.target(**target)
        restorer: dict[str, Any] = {"store": {"kind": "s3",
                                              "options": self.store_options(endpoint)}}
        if ssh is not None:
            restorer["ssh"] = ssh
        plan = make_plan(name, [
            {"name": "backups", "role": "store", "kind": "s3",
             "options": self.store_options(endpoint)},
            {"name": "pg", "role": "restorer", "kind": "basebackup", "options": restorer}],
            {"name": "restore-orders", "action": "restore", "backend": "pg",
             "timeout": "60s", "retries": retries,
             "params": {"store": "backups", "dataset": "orders",
                        "into": {"host": host, "path": path, "options": options}}})
        return plan, path, options

    def ssh(self, **extra: Any) -> dict[str, Any]:
        return {"user": self.sshd.user, "privateKey": {"fromFile": str(self.key_file)},
                "knownHosts": {"fromFile": str(self.known_hosts)}, "connectTimeout": 1,
                **extra}


@pytest.fixture(scope="session")
def backups() -> Iterator[Backups]:
    os.environ["RELIABILITY_AWS_ID"] = "testing"
    os.environ["RELIABILITY_AWS_SECRET"] = "testing"
    os.environ[KEY_ENV] = base64.b64encode(os.urandom(32)).decode()
    base = Path(tempfile.mkdtemp(prefix="reliability-backups-"))
    base.chmod(0o755)
    moto = MotoServer().start()
    source = PostgresServer(base / "source")
    sshd = SshServer(base / "sshd")
    try:
        source.init().start()
        source.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL); "
                    f"INSERT INTO orders SELECT g, g % 97 + 1 FROM generate_series(1, {ROWS}) g")
        moto.client("s3").create_bucket(Bucket="reliability")
        sshd.start()
        key_file, known = base / "client_key", base / "known_hosts"
        key_file.write_text(sshd.client_key.read_text())
        key_file.chmod(0o600)
        known.write_text(sshd.known_hosts)
        world = Backups(moto, "reliability", source, base, sshd, key_file, known)
        store = S3BackupStore(S3StoreOptions.model_validate(world.store_options()),
                              secrets=Secrets())
        backup = take_basebackup(store, dataset="orders", kind="daily", actor="reliability",
                                 host=str(source.sock), port=source.port)
        # proven restorable by the verifier's own contract tests; here only the faults matter
        store.record_verification(backup.id, {"passed": True, "summary": "verified",
                                              "checks": [], "durationS": 0.1},
                                  actor="verifier")
        yield world
    finally:
        sshd.stop()
        source.stop()
        moto.stop()
        shutil.rmtree(base, ignore_errors=True)


def stop_restored(path: str, options: dict[str, Any]) -> None:
    from controller.backups.hosts import LocalHost
    from controller.backups.node import Node, TargetOptions

    Node(LocalHost(), path, TargetOptions.model_validate(options), root=os.geteuid() == 0).stop()



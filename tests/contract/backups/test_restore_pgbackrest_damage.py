"""A pgBackRest set damaged in its repository after its verification: the restore step
falls back to the next verified set, on real pgBackRest 2.45 (an encrypted repository)
and real PostgreSQL 15.

Three sets, all verified (`pgbackrest verify` and a test restore); then one file is
damaged in the repository: in the newest set a byte flipped (pgBackRest's checksum of the
restored file fails), in the next one the file removed. Each restore fails inside
`pgbackrest restore`, with the target left as it was; the error is a `DamagedBackup`
naming the file, so the step restores the oldest set, its evidence says which sets were
damaged and which file, and the catalog marks the damaged ones not verified. A failure that
is not the set's (a pgbackrest.conf that is not there) is no damage: nothing falls back.
"""

from __future__ import annotations

import copy
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.backends import Backends
from controller.backups import DamagedBackup
from controller.backups.catalog import CatalogStore
from controller.backups.node import RestoreFailed
from controller.backups.restore import PgBackRestRestorer
from controller.backups.s3 import S3BackupStore
from controller.backups.take import register_pgbackrest
from controller.backups.verify import CatalogVerifier
from controller.drill.servers.postgres import PostgresServer, archive_to_pgbackrest, as_user
from controller.model import Backup, Target
from controller.netutil import free_port
from controller.plan import FailoverPlan, parse_plan
from controller.secrets import Secrets
from controller.steps import StepContext, restore
from tests.e2e.test_cli import EXAMPLE

from .conftest import ROWS, VALIDATION


@pytest.fixture
def encrypted_source(places: Path) -> Iterator[tuple[PostgresServer, Path]]:
    """A PostgreSQL archiving into its own ENCRYPTED pgBackRest repository (stanza main):
    the sets damaged here are no other test's."""
    server = PostgresServer(places / "source")
    conf = archive_to_pgbackrest(server, places / "pgbackrest")
    conf.write_text(conf.read_text().replace(
        "[global]\n", "[global]\nrepo1-cipher-type=aes-256-cbc\n"
                      "repo1-cipher-pass=damage-test-cipher-pass\n"
                      # a damaged file fails at once, not after pgBackRest's retries
                      "job-retry=0\n"))
    server.init().start()
    try:
        server.psql("CREATE TABLE orders (id int PRIMARY KEY, amount numeric NOT NULL); "
                    f"INSERT INTO orders SELECT g, g % 97 + 1 FROM generate_series(1, {ROWS}) g")
        subprocess.run(as_user(["pgbackrest", f"--config={conf}", "--stanza=main",
                                "stanza-create"]), check=True, capture_output=True)
        yield server, conf
    finally:
        server.stop()


def _plan(store: dict[str, Any], restorer: dict[str, Any], into: Target) -> FailoverPlan:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["spec"]["backends"] += [
        {"name": "vault", "role": "store", "kind": "s3", "options": store},
        {"name": "db", "role": "restorer", "kind": "pgbackrest", "options": restorer}]
    data["spec"]["steps"].append({
        "name": "restore-db", "action": "restore", "backend": "db",
        "params": {"store": "vault", "dataset": "orders", "rpo": "1h",
                   "into": {"path": into.path, "options": into.options}}})
    return parse_plan(data)


def _verified_sets(store: CatalogStore, store_options: dict[str, Any], conf: Path,
                   scratch: Path) -> list[Backup]:
    verifier = CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}, "scratch": str(scratch),
         "validation": VALIDATION, "pgbackrest": {"config": str(conf), "stanza": "main"}}),
        secrets=Secrets(), store=store)
    taken = []
    for _ in range(3):
        backup = register_pgbackrest(store, dataset="orders", kind="daily",
                                     actor="cron:nightly", config=str(conf), stanza="main")
        assert verifier.verify(backup=backup)["passed"]
        taken.append(backup)
        time.sleep(1.05)  # names carry whole seconds
    return taken


def _set_file(conf: Path, backup: Backup, relation: str) -> Path:
    label = backup.meta["pgbackrest"]["label"]
    path = conf.parent / "repo" / "backup" / "main" / label / "pg_data" / relation
    assert path.is_file(), path
    return path


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_sets_damaged_in_the_repository_make_the_step_restore_the_next_verified_one(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        encrypted_source: tuple[PostgresServer, Path], places: Path) -> None:
    source, conf = encrypted_source
    relation = source.psql("SELECT pg_relation_filepath('orders')")
    oldest, middle, newest = _verified_sets(s3_store, store_options, conf, places)
    _flip(_set_file(conf, newest, relation))  # pgBackRest's checksum of it fails
    _set_file(conf, middle, relation).unlink()

    path = places / "target" / "data"
    into = Target(host=None, path=str(path), options={
        "port": free_port(), "socketDir": str(path.parent / "sock"), "validation": VALIDATION,
        "rpo": 3600})
    plan = _plan(store_options, {"config": str(conf), "stanza": "main"}, into)
    backends = Backends(plan)
    ctx = StepContext(plan=plan, run_id="r1", level=None, backends=backends,
                      lookup_evidence=lambda run, step: {})
    restorer = backends.restorer("db")
    assert isinstance(restorer, PgBackRestRestorer)
    try:
        evidence = restore.KIND.apply(plan.spec.steps[-1], ctx, {})
    finally:
        restorer.stop(into=into)  # the server the restore started, by its PID

    assert [f["backup"] for f in evidence["fellBack"]] == [newest.id, middle.id]
    listed = {b.id: b for b in s3_store.list(dataset="orders")}
    for failed, backup, error in zip(evidence["fellBack"], (newest, middle),
                                     ("ChecksumError", "FileMissingError"), strict=True):
        named = f"pg_data/{relation} of set {backup.meta['pgbackrest']['label']}"
        assert named in failed["why"] and error in failed["why"]
        assert "damaged in the pgBackRest repository" in failed["why"]
        assert listed[backup.id].verified is False and named in listed[backup.id].verification
    assert evidence["chosen"] == evidence["backup"] == oldest.id
    assert evidence["set"] == oldest.meta["pgbackrest"]["label"]
    assert evidence["validation"][0]["value"] == str(ROWS)
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith("data.")) == [
        "data.restore-state"]  # the damaged sets' side directories went with their failure
    assert listed[oldest.id].verified is True


def test_a_restore_failing_on_its_configuration_is_no_damage(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        encrypted_source: tuple[PostgresServer, Path], places: Path) -> None:
    _, conf = encrypted_source
    backup = register_pgbackrest(s3_store, dataset="orders", kind="daily", actor="cron",
                                 config=str(conf), stanza="main")
    missing = places / "nowhere" / "pgbackrest.conf"
    restorer = PgBackRestRestorer(PgBackRestRestorer.Options.model_validate(
        {"config": str(missing), "stanza": "main"}), secrets=Secrets())
    path = places / "target" / "data"
    into = Target(host=None, path=str(path), options={
        "port": free_port(), "socketDir": str(path.parent / "sock"), "validation": VALIDATION})
    with pytest.raises(RestoreFailed) as err:
        restorer.test_restore(backup=backup, into=into)
    assert err.value.phase == "fetch" and str(missing) in str(err.value)
    assert not isinstance(err.value, DamagedBackup)

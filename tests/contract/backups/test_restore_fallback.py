"""The restore step falls back past a damaged backup, on real S3 (moto), a real directory
store and real PostgreSQL 15.

Two verified backups; the newer one's payload is damaged after its verification. On S3
the object's ETag gives it away to the integrity pass before anything is written; in a
directory store (no ETag, same size) only the restore's stream finds it, at the first bad
chunk. Either way the step restores the older verified backup, the evidence names the
damaged one and why, the restored database passes validation, and the RPO reported is
the one of the backup actually restored. The damaged backup is written back to the
store's catalog as failed at restore, with the reason and the time: the next restore's
choice, readiness's newest verified backup and the verifier's pending work all see it as
not verified, and the evidence says where it was marked.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.backends import Backends
from controller.backups.catalog import CatalogStore
from controller.backups.filesystem import FilesystemBackupStore
from controller.backups.restore import BaseBackupRestorer
from controller.backups.s3 import S3Objects
from controller.backups.schedule import newest_verified
from controller.backups.take import take_basebackup
from controller.backups.verify import CatalogVerifier
from controller.drill.servers.postgres import PostgresServer
from controller.model import Backup, Target
from controller.netutil import free_port
from controller.plan import FailoverPlan, parse_plan
from controller.secrets import Secrets
from controller.steps import StepContext, restore
from tests.e2e.test_cli import EXAMPLE

from .conftest import KEY_ENV, ROWS, VALIDATION


def _plan(store: dict[str, Any], into: Target) -> FailoverPlan:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["spec"]["backends"] += [
        {"name": "vault", "role": "store", "kind": store["kind"], "options": store["options"]},
        {"name": "db", "role": "restorer", "kind": "basebackup", "options": {"store": store}}]
    data["spec"]["steps"].append({
        "name": "restore-db", "action": "restore", "backend": "db",
        "params": {"store": "vault", "dataset": "orders", "rpo": "1h",
                   "into": {"path": into.path, "options": into.options}}})
    return parse_plan(data)


def _damage(store: CatalogStore, backup: Backup) -> None:
    """Flip one byte halfway through the stored payload: the same size."""
    key = backup.meta["objects"][0]["key"]
    objects = store.objects
    if isinstance(objects, S3Objects):
        full = objects.prefix + key
        body = objects.client.get_object(Bucket=objects.bucket, Key=full)["Body"].read()
        data = bytearray(body)
        data[len(data) // 2] ^= 0x01
        objects.client.put_object(Bucket=objects.bucket, Key=full, Body=bytes(data))
    else:
        assert isinstance(store, FilesystemBackupStore)
        path = Path(store.options.path) / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["s3", "filesystem"])
def test_a_backup_damaged_after_verification_makes_the_step_restore_the_next_verified_one(
        kind: str, request: pytest.FixtureRequest, source_pg: PostgresServer,
        workdir: Path, places: Path, tmp_path: Path) -> None:
    if kind == "s3":
        spec = {"kind": "s3", "options": request.getfixturevalue("store_options")}
        store: CatalogStore = request.getfixturevalue("s3_store")
        caught = "was rewritten since it was verified"  # by the integrity pass
    else:
        request.getfixturevalue("backup_key")
        spec = {"kind": "filesystem", "options": {"path": str(tmp_path / "catalog"),
                                                  "encryptionKey": {"fromEnv": KEY_ENV}}}
        store = FilesystemBackupStore(FilesystemBackupStore.Options.model_validate(
            spec["options"]), secrets=Secrets())
        caught = "authentication failed at chunk"  # by the restore's stream
    verifier = CatalogVerifier(CatalogVerifier.Options.model_validate(
        {"store": spec, "scratch": str(workdir), "validation": VALIDATION}),
        secrets=Secrets(), store=store)
    taken = []
    for _ in range(2):
        backup = take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                                 host=str(source_pg.sock), port=source_pg.port)
        assert verifier.verify(backup=backup)["passed"]
        taken.append(backup)
        time.sleep(1.05)  # names carry whole seconds
    older, newer = taken
    _damage(store, newer)

    path = places / f"fallback-{kind}" / "data"
    into = Target(host=None, path=str(path), options={
        "port": free_port(), "socketDir": str(path.parent / "sock"), "validation": VALIDATION,
        "rpo": 3600})
    plan = _plan(spec, into)
    backends = Backends(plan)
    ctx = StepContext(plan=plan, run_id="r1", level=None, backends=backends,
                      lookup_evidence=lambda run, step: {})
    restorer = backends.restorer("db")
    assert isinstance(restorer, BaseBackupRestorer)
    started = time.time()
    try:
        evidence = restore.KIND.apply(plan.spec.steps[-1], ctx, {})
    finally:
        restorer.stop(into=into)  # the server the restore started, by its PID
    [failed] = evidence["fellBack"]
    assert failed["backup"] == newer.id and caught in failed["why"]
    assert evidence["chosen"] == evidence["backup"] == older.id
    assert f"skipped newer {newer.id} failed at restore" in evidence["why"]
    assert f"payload bound to {older.id} (data set orders" in evidence["integrity"]
    assert [q["passed"] for q in evidence["validation"]] == [True, True]
    assert evidence["validation"][0]["value"] == str(ROWS)
    assert evidence["rpoSeconds"] >= started - older.taken_at  # the restored backup's age
    facts = restore.KIND.facts(evidence)
    assert facts[0].startswith(f"backup `{newer.id}` (daily, taken ") and caught in facts[0]

    # written back to the catalog: nothing counts the damaged backup as verified any more
    marked = store.objects.location(f"{newer.id}/catalog.json")
    assert failed["catalog"].startswith("marked not verified at ")
    assert failed["catalog"].endswith(f" in {marked}") and marked in facts[0]
    listed = {b.id: b for b in store.list(dataset="orders")}
    assert listed[newer.id].verified is False and listed[older.id].verified is True
    assert listed[newer.id].verification.startswith("restore failed: ")
    assert caught in listed[newer.id].verification
    last = listed[newer.id].meta["lastVerification"]
    assert last["by"] == "run r1" and started <= last["at"] <= time.time()
    assert newest_verified(list(listed.values())) == listed[older.id]  # readiness's
    assert verifier.verify_unverified(dataset="orders") == []  # nothing left pending
    summary = restore.KIND.plan(plan.spec.steps[-1], ctx).summary  # the next restore's
    assert summary.startswith(f"restoring {older.id} (daily, ")
    assert f"skipped newer {newer.id} failed verification (restore failed: " in summary

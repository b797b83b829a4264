"""Payloads bound to their catalog entry, on moto's real S3 server and real PostgreSQL 15.

What an operator relies on: a payload swapped with another backup's in the bucket is
refused by the integrity pass and by the restore itself, the message naming the backup
expected and the one the payload is, and nothing is written to the target; an object
rewritten since it was verified fails the integrity pass until it is verified again; a
payload written before binding (format 1) still verifies and restores, on its checksum,
and says "unbound (format 1)".
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import pytest

from controller.backups import crypto
from controller.backups.catalog import IntegrityFailed
from controller.backups.restore import BaseBackupRestorer
from controller.backups.s3 import S3BackupStore, S3Objects
from controller.backups.take import take_basebackup
from controller.backups.verify import CatalogVerifier
from controller.drill.servers.postgres import PostgresServer
from controller.model import Backup, Target
from controller.netutil import free_port
from controller.secrets import Secrets

from .conftest import VALIDATION


def _take(store: S3BackupStore, pg: PostgresServer) -> Backup:
    return take_basebackup(store, dataset="orders", kind="daily", actor="cron:nightly",
                           host=str(pg.sock), port=pg.port)


def _verify(store: S3BackupStore, options: dict[str, Any], workdir: Path) -> CatalogVerifier:
    return CatalogVerifier(CatalogVerifier.Options.model_validate({
        "store": {"kind": "s3", "options": options}, "scratch": str(workdir),
        "validation": VALIDATION}), secrets=Secrets(), store=store)


def _listed(store: S3BackupStore, backup: Backup) -> Backup:
    return next(b for b in store.list(dataset=backup.dataset) if b.id == backup.id)


def _object(store: S3BackupStore, backup: Backup) -> tuple[Any, str, str]:
    objects = store.objects
    assert isinstance(objects, S3Objects)
    return objects.client, objects.bucket, objects.prefix + backup.meta["objects"][0]["key"]


def _read(store: S3BackupStore, backup: Backup) -> bytes:
    client, bucket, key = _object(store, backup)
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def _write(store: S3BackupStore, backup: Backup, data: bytes) -> None:
    client, bucket, key = _object(store, backup)
    client.put_object(Bucket=bucket, Key=key, Body=data)


def test_a_payload_swapped_in_s3_is_refused_naming_both_and_nothing_is_written(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        places: Path) -> None:
    older = _take(s3_store, source_pg)
    time.sleep(1.05)  # names carry whole seconds
    newer = _take(s3_store, source_pg)
    a, b = _read(s3_store, older), _read(s3_store, newer)
    _write(s3_store, older, b)
    _write(s3_store, newer, a)
    newer = dataclasses.replace(_listed(s3_store, newer), verified=True)  # verified before
    said = f"the payload stored for backup {newer.id} (data set orders, taken "
    with pytest.raises(crypto.SwappedPayload) as err:
        s3_store.check_integrity(newer)
    assert said in str(err.value) and f"is the payload of backup {older.id}" in str(err.value)
    restorer = BaseBackupRestorer(BaseBackupRestorer.Options.model_validate(
        {"store": {"kind": "s3", "options": store_options}}), secrets=Secrets(),
        store=s3_store)
    target = places / "swapped" / "data"
    into = Target(host=None, path=str(target), options={
        "port": free_port(), "socketDir": str(places / "sock"), "validation": VALIDATION})
    with pytest.raises(crypto.SwappedPayload) as err:
        restorer.restore(backup=newer, into=into)
    assert said in str(err.value) and f"is the payload of backup {older.id}" in str(err.value)
    assert not target.exists() or not any(target.iterdir())


def test_an_object_rewritten_since_verification_fails_the_pass_until_verified_again(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path) -> None:
    backup = _take(s3_store, source_pg)
    assert backup.meta["objects"][0]["etag"]  # recorded when it was stored
    assert _verify(s3_store, store_options, workdir).verify(backup=backup)["passed"]
    backup = _listed(s3_store, backup)
    binding = crypto.Binding(backup.id, "orders", backup.taken_at)
    assert s3_store.check_integrity(backup) == (
        f"{backup.id}: {backup.id}/{backup.id}.bak: {backup.size} bytes, ETag as cataloged; "
        f"payload bound to {binding} (format 2)")
    _write(s3_store, backup, _read(s3_store, backup))  # the same bytes, uploaded anew
    with pytest.raises(IntegrityFailed, match=r"was rewritten since it was verified .*verify "
                                              r"it again"):
        s3_store.check_integrity(backup)
    result = _verify(s3_store, store_options, workdir).verify(backup=backup)
    assert result["passed"], result["summary"]
    s3_store.check_integrity(_listed(s3_store, backup))  # the new ETag was recorded


def test_a_payload_written_before_binding_still_verifies_and_says_it_is_unbound(
        s3_store: S3BackupStore, store_options: dict[str, Any], source_pg: PostgresServer,
        workdir: Path) -> None:
    backup = _take(s3_store, source_pg)
    with s3_store.open_payload(backup) as reader:
        plain = reader.read()
    sink = io.BytesIO()
    enc = crypto.EncryptingWriter(sink, s3_store.data_key(), binding=None)  # as written before
    enc.write(plain)
    enc.close()
    _write(s3_store, backup, sink.getvalue())
    entry = s3_store.entry(backup.id)
    entry["objects"][0] = {"key": entry["objects"][0]["key"], "size": enc.stored_size,
                           "sha256": enc.sha256.hexdigest()}
    del entry["encryption"]["payloadFormat"]
    s3_store._put_entry(entry)
    old = _listed(s3_store, backup)
    result = _verify(s3_store, store_options, workdir).verify(backup=old)
    assert result["passed"], result["summary"]
    assert result["checks"][0]["detail"].endswith(
        "sha256 match; payload unbound (format 1): accepted only when its SHA-256 and size "
        "match the catalog's")
    assert "payload unbound (format 1)" in s3_store.check_integrity(_listed(s3_store, old))

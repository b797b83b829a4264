"""The off-site copy and retention on real S3 servers (two moto servers: dc-a's store and
dc-b's off-site store, each with its own key): re-encrypted while streaming, checked
there, nothing left behind by a copy that fails; pruning deletes the objects themselves
and never the last verified backup; a copy staged by a job that died before its off-site
phase is removed once stray, never a cataloged copy."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from controller.backups import DamagedBackup, crypto, naming
from controller.backups.offsite import OffsiteError, copy_offsite
from controller.backups.retention import prune, prune_strays
from controller.backups.s3 import S3BackupStore
from controller.model import Backup
from controller.plan import Retention
from controller.secrets import Secrets

from .offsite_store import offsite_endpoint, offsite_options, offsite_store  # noqa: F401

DAY = 86400.0


def _add(store: S3BackupStore, tmp_path: Path, *, taken_at: float,
         verified: bool | None = True) -> Backup:
    src = tmp_path / f"data-{taken_at}"
    src.mkdir()
    (src / "PG_VERSION").write_text("15\n")
    (src / "base.dat").write_bytes(bytes(range(256)) * 20000)  # 5 MB: several chunks
    backup = store.add_directory(src, dataset="orders", kind="daily", taken_at=taken_at,
                                 actor="alice")
    if verified is None:
        return backup
    return store.record_verification(backup.id, {
        "passed": verified, "at": time.time(), "durationS": 0.1,
        "summary": "passed: checksums" if verified else "checksums failed",
        "checks": []}, actor="verifier")


def _keys(endpoint: str, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket) for o in page.get("Contents", [])]


def _plain(store: S3BackupStore, backup: Backup | str) -> bytes:
    with store.open_payload(backup) as reader:
        return reader.read()


def test_copy_is_reencrypted_with_the_offsite_key_and_checked_there(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        tmp_path: Path, journal: Any) -> None:
    backup = _add(s3_store, tmp_path, taken_at=time.time())
    copy = copy_offsite(s3_store, offsite_store, backup, actor="alice")

    assert copy.id == backup.id and copy.verified is True
    assert "read back" in copy.verification
    assert copy.meta["lastVerification"]["checks"][0]["passed"] is True
    # stored under the off-site key (its id in the header), bound to the same backup
    with offsite_store.open_raw(naming.payload_key(copy.id)) as raw:
        header = crypto.parse_header(raw.read(crypto.MAX_HEADER), name=copy.id)
    assert header.key_id == crypto.key_id(offsite_store.data_key()) != crypto.key_id(
        s3_store.data_key())
    assert _plain(offsite_store, copy.id) == _plain(s3_store, backup)
    assert ("alice", "backup-offsite") in [(a["actor"], a["action"])
                                           for a in journal.audit_trail()]


def test_an_unverified_backup_is_not_copied(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        tmp_path: Path) -> None:
    backup = _add(s3_store, tmp_path, taken_at=time.time(), verified=None)
    with pytest.raises(OffsiteError, match="not verified"):
        copy_offsite(s3_store, offsite_store, backup, actor="alice")
    assert offsite_store.list(dataset="orders") == []


def test_a_source_damaged_since_verification_leaves_nothing_offsite(
        s3_store: S3BackupStore, store_options: dict[str, Any],
        offsite_store: S3BackupStore, offsite_options: dict[str, Any],  # noqa: F811
        s3_endpoint: str, offsite_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    backup = _add(s3_store, tmp_path, taken_at=time.time())
    key = f"{store_options['prefix']}/{naming.payload_key(backup.id)}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    data = bytearray(client.get_object(Bucket=store_options["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the middle of the payload
    client.put_object(Bucket=store_options["bucket"], Key=key, Body=bytes(data))

    with pytest.raises(DamagedBackup):
        copy_offsite(s3_store, offsite_store, backup, actor="alice")
    assert offsite_store.list(dataset="orders") == []
    assert _keys(offsite_endpoint, offsite_options["bucket"]) == []


def test_retention_deletes_pruned_objects_and_keeps_the_last_verified_backup(
        s3_store: S3BackupStore, store_options: dict[str, Any], s3_endpoint: str,
        tmp_path: Path, journal: Any) -> None:
    now = time.time()
    old_verified = _add(s3_store, tmp_path, taken_at=now - 40 * DAY)
    old_failed = _add(s3_store, tmp_path, taken_at=now - 35 * DAY, verified=False)
    newer_failed = _add(s3_store, tmp_path, taken_at=now - 31 * DAY, verified=False)

    removed = prune(s3_store, dataset="orders", rule=Retention(keep=3, maxAge=30 * DAY),
                    actor="alice")

    assert {p.backup.id for p in removed} == {old_failed.id, newer_failed.id}
    assert [b.id for b in s3_store.list(dataset="orders")] == [old_verified.id]
    left = _keys(s3_endpoint, store_options["bucket"])
    assert left and all(old_verified.id in k for k in left)
    assert [a["detail"] for a in journal.audit_trail()
            if a["action"] == "backup-pruned" and old_failed.id in a["detail"]]


def test_a_copy_staged_as_the_backup_was_taken_is_cataloged_and_checked_not_copied_again(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        tmp_path: Path, journal: Any) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "base.dat").write_bytes(bytes(range(256)) * 20000)
    taken = s3_store.add_directory(src, dataset="orders", kind="daily", taken_at=time.time(),
                                   actor="alice", stage_in=offsite_store)
    # written beside the payload, in no catalog yet: nothing lists or restores it
    assert offsite_store.list(dataset="orders") == []
    staged = offsite_store.objects.peek(naming.payload_key(taken.id), 0)
    backup = s3_store.record_verification(taken.id, {
        "passed": True, "at": time.time(), "durationS": 0.1, "summary": "passed: checksums",
        "checks": []}, actor="verifier")

    copy = copy_offsite(s3_store, offsite_store, backup, actor="alice")

    assert copy.verified is True and "read back" in copy.verification
    assert offsite_store.objects.peek(naming.payload_key(copy.id), 0).etag == staged.etag
    assert "offsiteStaged" not in offsite_store.entry(copy.id)
    assert _plain(offsite_store, copy.id) == _plain(s3_store, backup)
    assert any(a["action"] == "backup-offsite" and "staged as it was taken" in a["detail"]
               for a in journal.audit_trail())


def test_an_offsite_store_failing_while_the_backup_is_taken_fails_only_the_staged_copy(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        offsite_options: dict[str, Any], tmp_path: Path, journal: Any) -> None:  # noqa: F811
    gone = S3BackupStore(S3BackupStore.Options.model_validate(
        {**offsite_options, "bucket": "no-such-bucket"}), secrets=Secrets())
    src = tmp_path / "data"
    src.mkdir()
    (src / "base.dat").write_bytes(os.urandom(100_000))
    taken = s3_store.add_directory(src, dataset="orders", kind="daily", taken_at=time.time(),
                                   actor="alice", stage_in=gone)
    assert "offsiteStaged" not in s3_store.entry(taken.id)
    backup = s3_store.record_verification(taken.id, {
        "passed": True, "at": time.time(), "durationS": 0.1, "summary": "passed: checksums",
        "checks": []}, actor="verifier")

    copy = copy_offsite(s3_store, offsite_store, backup, actor="alice")  # copied the usual way

    assert copy.verified is True
    assert _plain(offsite_store, copy.id) == _plain(s3_store, backup)
    assert any(a["action"] == "backup-offsite" and "re-encrypted from the store" in a["detail"]
               for a in journal.audit_trail())


def test_a_staged_copy_damaged_before_its_check_is_recorded_failed(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        offsite_options: dict[str, Any], offsite_endpoint: str,  # noqa: F811
        tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "base.dat").write_bytes(bytes(range(256)) * 20000)
    taken = s3_store.add_directory(src, dataset="orders", kind="daily", taken_at=time.time(),
                                   actor="alice", stage_in=offsite_store)
    key = f"{offsite_options['prefix']}/{naming.payload_key(taken.id)}"
    client = boto3.client("s3", endpoint_url=offsite_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    data = bytearray(client.get_object(Bucket=offsite_options["bucket"], Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size: only reading it back can tell
    client.put_object(Bucket=offsite_options["bucket"], Key=key, Body=bytes(data))
    backup = s3_store.record_verification(taken.id, {
        "passed": True, "at": time.time(), "durationS": 0.1, "summary": "passed: checksums",
        "checks": []}, actor="verifier")

    copy = copy_offsite(s3_store, offsite_store, backup, actor="alice")

    assert copy.verified is False and "read back failed" in copy.verification


def test_a_copy_staged_by_a_job_that_died_is_pruned_once_stray_never_a_cataloged_copy(
        s3_store: S3BackupStore, offsite_store: S3BackupStore,  # noqa: F811
        offsite_options: dict[str, Any], offsite_endpoint: str,  # noqa: F811
        tmp_path: Path, journal: Any) -> None:
    now = time.time()
    # the last verified copy off-site: cataloged there
    kept = copy_offsite(s3_store, offsite_store, _add(s3_store, tmp_path, taken_at=now - DAY),
                        actor="alice")
    # a job that died between the take and the off-site phase: its copy staged, uncataloged
    src = tmp_path / "died"
    src.mkdir()
    (src / "base.dat").write_bytes(os.urandom(100_000))
    died = s3_store.add_directory(src, dataset="orders", kind="daily", taken_at=now,
                                  actor="alice", stage_in=offsite_store)
    staged = f"{offsite_options['prefix']}/{naming.payload_key(died.id)}"
    assert staged in _keys(offsite_endpoint, offsite_options["bucket"])
    rule = Retention(keep=1, strayAfter="2d")

    # within the bound it may be a running job's: kept
    assert prune_strays(offsite_store, dataset="orders", rule=rule, actor="alice",
                        now=now + DAY) == []
    assert staged in _keys(offsite_endpoint, offsite_options["bucket"])
    # another data set's stray is not this job's to remove
    assert prune_strays(offsite_store, dataset="users", rule=rule, actor="alice",
                        now=now + 3 * DAY) == []

    removed = prune_strays(offsite_store, dataset="orders", rule=rule, actor="alice",
                           now=now + 3 * DAY)

    assert len(removed) == 1 and died.id in removed[0] and "strayAfter 48h" in removed[0]
    left = _keys(offsite_endpoint, offsite_options["bucket"])
    assert staged not in left
    assert sorted(left) == sorted(f"{offsite_options['prefix']}/{k}" for k in (
        naming.payload_key(kept.id), naming.catalog_key(kept.id)))
    assert [b.id for b in offsite_store.list(dataset="orders")] == [kept.id]
    assert _plain(offsite_store, kept.id)  # the cataloged copy still restores
    # the source keeps its backup: only the uncataloged copy went
    assert died.id in [b.id for b in s3_store.list(dataset="orders")]
    assert any(a["action"] == "backup-stray-pruned" and died.id in a["detail"]
               for a in journal.audit_trail())

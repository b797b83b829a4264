"""The S3 records store on moto's real S3 server: each record Object-Locked until `keep`
from now, so the bucket refuses to delete or overwrite it; a changed object is refused as
damaged, naming its key; a bucket without Object Lock and an unreachable endpoint say so."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from controller.drill.servers.moto import MotoServer
from controller.plan_records import RecordsSpec
from controller.records.store import (
    RecordDamaged,
    RecordExists,
    RecordMissing,
    RecordsError,
    S3Store,
    open_store,
)
from tests.contract.records.conftest import SECRET


def s3(records: dict[str, Any]) -> S3Store:
    made = open_store(RecordsSpec.model_validate(records))
    assert isinstance(made, S3Store)
    return made


def test_a_record_is_locked_in_compliance_mode_until_keep_from_now(
        s3_records: dict[str, Any], moto: MotoServer) -> None:
    st = s3(s3_records)
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")  # a retry

    bucket, raw = s3_records["store"]["options"]["bucket"], moto.client("s3")
    head = raw.head_object(Bucket=bucket, Key="dc-a/runs/web/r1.json")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"] - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=179) < until <= datetime.timedelta(days=180)
    assert st.get("runs/web/r1.json") == b'{"a": 1}'
    assert list(st.keys("runs/")) == ["runs/web/r1.json"]

    with pytest.raises(ClientError, match="AccessDenied"):  # the bucket enforces `keep`
        raw.delete_object(Bucket=bucket, Key="dc-a/runs/web/r1.json",
                          VersionId=head["VersionId"])
    with pytest.raises(RecordExists, match="never overwritten"):
        st.put("runs/web/r1.json", b'{"a": 2}', content_type="application/json")
    assert st.get("runs/web/r1.json") == b'{"a": 1}'


def test_governance_mode_is_kept_as_asked(s3_records: dict[str, Any],
                                          moto: MotoServer) -> None:
    s3_records["store"]["options"]["objectLock"] = "GOVERNANCE"
    s3(s3_records).put("drills/web/20261205T100000Z-r1.json", b"{}",
                       content_type="application/json")
    head = moto.client("s3").head_object(Bucket=s3_records["store"]["options"]["bucket"],
                                         Key="dc-a/drills/web/20261205T100000Z-r1.json")
    assert head["ObjectLockMode"] == "GOVERNANCE"


def test_an_object_changed_behind_the_store_is_damaged_and_named(
        s3_records: dict[str, Any], moto: MotoServer) -> None:
    st = s3(s3_records)
    st.put("runs/web/r1.json", b'{"a": 1}', content_type="application/json")
    bucket = s3_records["store"]["options"]["bucket"]
    # a new version over the locked one (the locked version itself stays)
    moto.client("s3").put_object(Bucket=bucket, Key="dc-a/runs/web/r1.json", Body=b"{}",
                                 Metadata={"sha256": "0" * 64})
    with pytest.raises(RecordDamaged) as err:
        st.get("runs/web/r1.json")
    said = str(err.value)
    assert f"archived record runs/web/r1.json in s3://{bucket}/dc-a/ is damaged" in said
    assert "recorded " + "0" * 64 in said and "list-object-versions" in said
    with pytest.raises(RecordMissing, match=f"no record runs/web/r2.json in s3://{bucket}"):
        st.get("runs/web/r2.json")


def test_a_bucket_without_object_lock_and_a_dead_endpoint_say_what_to_do(
        s3_records: dict[str, Any], moto: MotoServer) -> None:
    moto.client("s3").create_bucket(Bucket="records-unlocked")
    s3_records["store"]["options"]["bucket"] = "records-unlocked"
    with pytest.raises(RecordsError) as err:
        s3(s3_records).put("runs/web/r1.json", b"{}", content_type="application/json")
    assert "create the bucket with Object Lock enabled, or set " \
           "records.store.options.objectLock: null" in str(err.value)
    s3_records["store"]["options"]["objectLock"] = None
    s3(s3_records).put("runs/web/r1.json", b"{}", content_type="application/json")

    s3_records["store"]["options"]["endpointUrl"] = "http://127.0.0.1:9"
    with pytest.raises(RecordsError) as down:
        s3(s3_records).put("runs/web/r2.json", b"{}", content_type="application/json")
    assert "cannot write record runs/web/r2.json in s3://records-unlocked/dc-a/: " \
           "EndpointConnectionError" in str(down.value)
    assert SECRET not in str(down.value)

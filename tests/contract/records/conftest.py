"""Fixtures of the records store's contract tests: moto's S3 server on a free port (in
this process), a fresh Object-Locked bucket per test, and the plan's `spec.records` for it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from controller.drill.servers.moto import MotoServer

_COUNTER = itertools.count()
KEY_ID, SECRET = "AKIDRECORDSTEST01", "records-test-secret-value"


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_records(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`spec.records` of a new bucket with Object Lock enabled (moto keeps buckets in this
    process's memory: each test gets its own name)."""
    bucket = f"records-{next(_COUNTER)}"
    moto.client("s3").create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("RECORDS_TEST_AWS_ID", KEY_ID)
    monkeypatch.setenv("RECORDS_TEST_AWS_SECRET", SECRET)
    return {"store": {"kind": "s3", "options": {
        "bucket": bucket, "prefix": "dc-a", "endpointUrl": moto.endpoint,
        "accessKeyId": {"fromEnv": "RECORDS_TEST_AWS_ID"},
        "secretAccessKey": {"fromEnv": "RECORDS_TEST_AWS_SECRET"}}}, "keep": "180d"}

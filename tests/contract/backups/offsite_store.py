"""The off-site store of the backup tests: a second moto S3 server (its own endpoint), its
own bucket per test and its own encryption key, as a second data centre's store would be.
Imported by the test modules that need it (`from .offsite_store import ...`)."""

from __future__ import annotations

import base64
import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from controller.backups.s3 import S3BackupStore, S3StoreOptions
from controller.drill.servers.moto import MotoServer
from controller.secrets import Secrets

OFFSITE_KEY_ENV = "FAILOVER_TEST_OFFSITE_KEY"
_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def offsite_endpoint() -> Iterator[str]:
    with MotoServer() as moto:
        yield moto.endpoint


@pytest.fixture
def offsite_options(offsite_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                    request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv(OFFSITE_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:36].strip("-")
    bucket = f"offsite-{next(_COUNTER)}-{name}"
    client = boto3.client("s3", endpoint_url=offsite_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    yield {"bucket": bucket, "prefix": "dc-b/orders", "endpointUrl": offsite_endpoint,
           "accessKeyId": {"fromEnv": "FAILOVER_TEST_AWS_ID"},
           "secretAccessKey": {"fromEnv": "FAILOVER_TEST_AWS_SECRET"},
           "encryptionKey": {"fromEnv": OFFSITE_KEY_ENV}}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def offsite_store(offsite_options: dict[str, Any], store_options: dict[str, Any],
                  journal: Any) -> S3BackupStore:
    """(`store_options` first: it sets the S3 credentials' environment variables.)"""
    return S3BackupStore(S3StoreOptions.model_validate(offsite_options), secrets=Secrets(),
                         audit=journal.audit)

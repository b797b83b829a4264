"""An S3 store behind TLS signed by a private CA (a real moto server serving HTTPS with a
certificate from a CA made here): with `caBundle` naming the CA's PEM file the store
works; without it the endpoint's certificate is refused (never trusted silently); a
`caBundle` file that is not there fails when the store is built, naming the option and
the path.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import SSLError

from controller.backups.catalog import CatalogError
from controller.backups.s3 import S3BackupStore
from controller.drill.servers.base import free_port
from controller.secrets import Secrets

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _private_ca(at: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(at / "ca.key"), "-out", str(at / "ca.pem"),
             "-days", "2", "-subj", "/CN=failover test CA")
    _openssl("req", *ec, "-keyout", str(at / "server.key"), "-out", str(at / "server.csr"),
             "-subj", "/CN=127.0.0.1")
    (at / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(at / "server.csr"), "-CA", str(at / "ca.pem"),
             "-CAkey", str(at / "ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(at / "san.ext"), "-out", str(at / "server.pem"))
    return at / "ca.pem", at / "server.pem", at / "server.key"


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """moto's S3 server on HTTPS (its own process, stopped by PID): (endpoint, CA file)."""
    at = tmp_path_factory.mktemp("tls-s3")
    ca, cert, key = _private_ca(at)
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port), "-c", str(cert),
                             "-k", str(key)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(ca))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, context=trust, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers over TLS
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server on {endpoint} did not start") from None
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", verify=str(ca),
                     **CREDENTIALS).create_bucket(Bucket="backups")
        yield endpoint, ca
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _store(endpoint: str, backup_key: str, **extra: Any) -> S3BackupStore:
    os.environ["FAILOVER_TEST_AWS_ID"] = CREDENTIALS["aws_access_key_id"]
    os.environ["FAILOVER_TEST_AWS_SECRET"] = CREDENTIALS["aws_secret_access_key"]
    return S3BackupStore(S3BackupStore.Options.model_validate({
        "bucket": "backups", "prefix": "dc-b", "endpointUrl": endpoint,
        "accessKeyId": {"fromEnv": "FAILOVER_TEST_AWS_ID"},
        "secretAccessKey": {"fromEnv": "FAILOVER_TEST_AWS_SECRET"}, **extra}),
        secrets=Secrets())


def test_a_store_behind_a_private_ca_works_with_its_ca_bundle(
        tls_s3: tuple[str, Path], backup_key: str, tmp_path: Path) -> None:
    endpoint, ca = tls_s3
    store = _store(endpoint, backup_key, caBundle=str(ca),
                   encryptionKey={"fromEnv": "FAILOVER_TEST_BACKUP_KEY"})
    source = tmp_path / "source"
    source.mkdir()
    (source / "PG_VERSION").write_text("15\n")
    backup = store.add_directory(source, dataset="orders", kind="daily", taken_at=1000,
                                 actor="cron")
    assert [b.id for b in store.list(dataset="orders")] == [backup.id]
    with store.open_payload(backup) as reader:
        assert reader.read()  # the payload streams back over TLS, authenticated


def test_without_the_ca_bundle_the_endpoints_certificate_is_refused(
        tls_s3: tuple[str, Path], backup_key: str) -> None:
    endpoint, _ = tls_s3
    with pytest.raises(SSLError, match="certificate verify failed"):
        _store(endpoint, backup_key).list(dataset="orders")


def test_a_ca_bundle_that_is_not_there_fails_naming_the_option(
        tls_s3: tuple[str, Path], backup_key: str, tmp_path: Path) -> None:
    endpoint, _ = tls_s3
    missing = tmp_path / "ca" / "bundle.pem"
    with pytest.raises(CatalogError, match=rf"options\.caBundle '{missing}' is not a "
                                           "readable file: point it at the PEM file"):
        _store(endpoint, backup_key, caBundle=str(missing))

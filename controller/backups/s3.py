"""S3 backup store: the catalog in a bucket of any S3-compatible endpoint (boto3).

Owns the S3 primitives of `CatalogStore`. Payloads are streamed up as multipart uploads
(8 MiB parts, four uploaded at once while the next fills, memory bounded; a failed part
aborts the upload, so no half object appears) and streamed down from
`get_object`, never held whole in memory; `peek` reads an object's first bytes, size and
ETag with one ranged GET (the integrity pass before a restore). Credentials come from
SecretRefs (or boto3's default chain when none are given) and never reach messages; an
endpoint whose certificate a private CA signs is trusted through `caBundle` (a PEM file),
checked when the store is built so a missing file fails naming the option.
botocore retries each call a bounded number of times (standard mode); the small
idempotent catalog calls are also wrapped in a bounded tenacity retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, cast

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from controller.backups import naming
from controller.backups.catalog import CatalogError, CatalogStore, Peek, StoreOptions, Stray
from controller.secrets import SecretRef, redact

log = logging.getLogger(__name__)
PART = 8 << 20
PARALLEL = 4  # parts uploaded at once: at most (PARALLEL + 1) * PART bytes held
_retry = retry(reraise=True, stop=stop_after_attempt(3),
               wait=wait_exponential(multiplier=0.2, max=2),
               retry=retry_if_exception_type((BotoCoreError, ConnectionError)))


class S3StoreOptions(StoreOptions):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = Field(None, alias="endpointUrl")
    region: str = "us-east-1"
    access_key_id: SecretRef | None = Field(None, alias="accessKeyId")
    secret_access_key: SecretRef | None = Field(None, alias="secretAccessKey")
    ca_bundle: str | None = Field(
        None, alias="caBundle", description="PEM file of the CA certificates that sign the "
        "endpoint's TLS certificate (a private CA); default: the system's trust store")


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class _MultipartWriter:
    """A multipart upload fed like a file: each full part is sent by a pool of `parallel`
    threads while the next one fills (boto3 clients are thread-safe; a part's upload
    mostly waits on the network). Memory is bounded: a part waits for a free upload slot
    before it is handed over, so at most `parallel` parts are in flight plus the one
    filling. The first part that fails (after botocore's own retries) fails the next
    write, or `complete`; `abort` then lets the parts in flight end and aborts the upload,
    so no part is added after the abort and nothing half-written is left."""

    def __init__(self, client: Any, bucket: str, key: str, *, parallel: int = PARALLEL):
        self.client, self.bucket, self.key = client, bucket, key
        self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self.buf = bytearray()
        self._pool = ThreadPoolExecutor(parallel, thread_name_prefix="s3-part")
        self._slots = threading.Semaphore(parallel)
        self._parts: list[Future[dict[str, Any]]] = []
        self._failed: BaseException | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        self.buf += data
        while len(self.buf) >= PART:
            with memoryview(self.buf) as view:
                part = bytes(view[:PART])  # one copy (a slice of the bytearray is another)
            del self.buf[:PART]
            self._send(part)
        return len(data)

    def flush(self) -> None:
        pass

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _send(self, data: bytes) -> None:
        self._slots.acquire()  # a slot frees when a part in flight ends (or fails)
        try:
            self._check()
            part = self._pool.submit(self._upload, len(self._parts) + 1, data)
        except BaseException:
            self._slots.release()
            raise
        part.add_done_callback(self._ended)
        self._parts.append(part)

    def _ended(self, part: Future[dict[str, Any]]) -> None:
        if not part.cancelled() and part.exception() is not None and self._failed is None:
            self._failed = part.exception()
        self._slots.release()

    def _upload(self, number: int, data: bytes) -> dict[str, Any]:
        got = self.client.upload_part(Bucket=self.bucket, Key=self.key, PartNumber=number,
                                      UploadId=self.upload_id, Body=data)
        return {"PartNumber": number, "ETag": got["ETag"]}

    def complete(self) -> None:
        if self.buf or not self._parts:
            self._send(bytes(self.buf))
            self.buf.clear()
        parts = [part.result() for part in self._parts]  # the first failure raises
        self._pool.shutdown()
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                              UploadId=self.upload_id,
                                              MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # no part lands after the abort
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                               UploadId=self.upload_id)
        except Exception as exc:  # the write's own error is the one raised
            log.error("could not abort the multipart upload of %s (upload id %s): %s; the "
                      "parts sent stay invisible (no object) until the bucket's lifecycle "
                      "rule for incomplete uploads removes them", self.key, self.upload_id,
                      redact(str(exc)))


class S3Objects:
    def __init__(self, client: Any, bucket: str, prefix: str, endpoint: str | None):
        self.client, self.bucket, self.endpoint = client, bucket, endpoint
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _k(self, key: str) -> str:
        return self.prefix + key

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        w = _MultipartWriter(self.client, self.bucket, self._k(key))
        try:
            yield cast(BinaryIO, w)
            w.complete()
        except BaseException:
            w.abort()
            raise

    def reader(self, key: str) -> BinaryIO:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(self.location(key)) from None
            raise
        return cast(BinaryIO, body)

    @_retry
    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                               ContentType="application/json")

    @_retry
    def get_bytes(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket,
                                                Key=self._k(key))["Body"].read())
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(self.location(key)) from None
            raise

    @_retry
    def peek(self, key: str, n: int) -> Peek:
        try:
            if n == 0:
                head = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
                return Peek(b"", int(head["ContentLength"]), head.get("ETag"))
            got = self.client.get_object(Bucket=self.bucket, Key=self._k(key),
                                         Range=f"bytes=0-{n - 1}")
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(self.location(key)) from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # empty object
                return self.peek(key, 0)
            raise
        total = got.get("ContentRange", "").rpartition("/")[2] or got["ContentLength"]
        return Peek(bytes(got["Body"].read()), int(total), got.get("ETag"))

    @_retry
    def names(self) -> list[str]:
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix, Delimiter="/")
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                out.append(cp["Prefix"][len(self.prefix):].rstrip("/"))
        return sorted(out)

    @_retry
    def uncataloged(self) -> list[Stray]:
        payloads: dict[str, float] = {}
        cataloged: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                name, _, rest = obj["Key"][len(self.prefix):].partition("/")
                if rest == "catalog.json":
                    cataloged.add(name)
                elif rest == naming.payload_key(name).partition("/")[2]:
                    payloads[name] = obj["LastModified"].timestamp()
        return sorted(Stray(name, at) for name, at in payloads.items()
                      if name not in cataloged)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._k(key)}"

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))


class S3BackupStore(CatalogStore):
    Options = S3StoreOptions
    options: S3StoreOptions

    def _objects(self) -> S3Objects:
        import boto3

        o = self.options
        creds: dict[str, str] = {}
        if o.access_key_id is not None and o.secret_access_key is not None:
            creds = {"aws_access_key_id": self._secrets.reveal(o.access_key_id).strip(),
                     "aws_secret_access_key": self._secrets.reveal(o.secret_access_key).strip()}
        elif (o.access_key_id is None) != (o.secret_access_key is None):
            raise CatalogError("S3 store: give both accessKeyId and secretAccessKey, or "
                               "neither (to use the default AWS credential chain)")
        verify: str | None = None
        if o.ca_bundle is not None:
            if not os.path.isfile(o.ca_bundle):
                raise CatalogError(f"S3 store: options.caBundle {o.ca_bundle!r} is not a "
                                   "readable file: point it at the PEM file of the CA that "
                                   "signs the endpoint's certificate (e.g. a mounted "
                                   "ConfigMap), or remove it to use the system's trust store")
            verify = o.ca_bundle
        client = boto3.client(
            "s3", endpoint_url=o.endpoint_url, region_name=o.region, verify=verify,
            # no CRC32 of every part and download (botocore's default since 1.36), and no
            # SHA-256 of every part for its signature (botocore signs the payload when no
            # checksum header is sent, over HTTPS too): the catalog's SHA-256 of each
            # stored object, checked by reading it back, every chunk's GCM tag and TLS are
            # the integrity checks, and each of those passes would cost one over every byte
            config=Config(retries={"max_attempts": 4, "mode": "standard"},
                          connect_timeout=10, read_timeout=60,
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          s3={"payload_signing_enabled": False}),
            **creds)
        return S3Objects(client, o.bucket, o.prefix, o.endpoint_url)

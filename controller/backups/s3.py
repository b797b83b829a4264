"""S3 backup store: the catalog in a bucket of any S3-compatible endpoint (boto3).

Owns the S3 primitives of `CatalogStore`. Payloads are streamed up as multipart uploads
(8 MiB parts, aborted on error so no half object appears) and streamed down from
`get_object`, never held whole in memory; `peek` reads an object's first bytes, size and
ETag with one ranged GET (the integrity pass before a restore). Credentials come from
SecretRefs (or boto3's default chain when none are given) and never reach messages.
botocore retries each call a bounded number of times (standard mode); the small
idempotent catalog calls are also wrapped in a bounded tenacity retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from controller.backups.catalog import CatalogError, CatalogStore, Peek, StoreOptions
from controller.secrets import SecretRef

PART = 8 << 20
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


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class _MultipartWriter:
    def __init__(self, client: Any, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key
        self.upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self.parts: list[dict[str, Any]] = []
        self.buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        while len(self.buf) >= PART:
            self._part(bytes(self.buf[:PART]))
            del self.buf[:PART]
        return len(data)

    def flush(self) -> None:
        pass

    def _part(self, data: bytes) -> None:
        number = len(self.parts) + 1
        got = self.client.upload_part(Bucket=self.bucket, Key=self.key, PartNumber=number,
                                      UploadId=self.upload_id, Body=data)
        self.parts.append({"PartNumber": number, "ETag": got["ETag"]})

    def complete(self) -> None:
        if self.buf or not self.parts:
            self._part(bytes(self.buf))
            self.buf.clear()
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key,
                                              UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key,
                                               UploadId=self.upload_id)


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
        client = boto3.client(
            "s3", endpoint_url=o.endpoint_url, region_name=o.region,
            config=Config(retries={"max_attempts": 4, "mode": "standard"},
                          connect_timeout=10, read_timeout=60),
            **creds)
        return S3Objects(client, o.bucket, o.prefix, o.endpoint_url)

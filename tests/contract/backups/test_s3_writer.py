"""The S3 store's payload writer, on moto's real S3 server: the parts of a multipart upload
go up side by side while the next one fills (a backup's upload is not one part's round
trip after another), with memory bounded (at most `PARALLEL` parts in flight; the writer
waits for a slot), the object byte for byte what was written, in order; and a part that
fails aborts the whole upload: no object, no upload left in progress, no part added after.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller.backups.s3 import PARALLEL, PART, S3BackupStore
from controller.secrets import Secrets

KEY = "20261205T020000Z_orders_daily/20261205T020000Z_orders_daily.bak"


def _store(store_options: dict[str, Any]) -> S3BackupStore:
    return S3BackupStore(S3BackupStore.Options.model_validate(store_options), secrets=Secrets())


def _on_part(store: S3BackupStore, hook: Callable[[int], None]) -> None:
    """Call `hook(part number)` in the thread uploading each part, before it is sent."""
    def handler(params: dict[str, Any], **_: Any) -> None:
        hook(int(params["PartNumber"]))

    store.objects.client.meta.events.register("provide-client-params.s3.UploadPart", handler)


def _write(store: S3BackupStore, data: bytes, progress: list[int] | None = None) -> None:
    with store.objects.writer(KEY) as sink:
        for at in range(0, len(data), 1 << 20):
            sink.write(data[at:at + (1 << 20)])
            if progress is not None:
                progress.append(at + (1 << 20))


def _stored(store: S3BackupStore) -> bytes:
    with store.objects.reader(KEY) as fh:
        return bytes(fh.read())


def test_parts_are_uploaded_side_by_side_and_the_object_is_what_was_written(
        store_options: dict[str, Any]) -> None:
    store = _store(store_options)
    both = threading.Barrier(2, timeout=60)  # parts 1 and 2 must be in flight together
    _on_part(store, lambda n: both.wait() if n <= 2 else None)
    data = os.urandom(3 * PART + 12345)
    _write(store, data)
    assert _stored(store) == data


def test_memory_is_bounded_the_writer_waits_for_a_free_upload_slot(
        store_options: dict[str, Any]) -> None:
    store = _store(store_options)
    release, lock = threading.Event(), threading.Lock()
    flight = {"now": 0, "most": 0}

    def hold(_: int) -> None:
        with lock:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
        release.wait(120)
        with lock:
            flight["now"] -= 1

    _on_part(store, hold)
    data, written = os.urandom((PARALLEL + 4) * PART), [0]
    writer = threading.Thread(target=_write, args=(store, data, written))
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while flight["now"] < PARALLEL and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # room for a writer that does not wait to run ahead
        assert flight["most"] == PARALLEL
        # the parts in flight, the one filled next, and the write that filled it
        assert written[-1] <= (PARALLEL + 1) * PART + (1 << 20) and writer.is_alive()
    finally:
        release.set()
        writer.join(120)
    assert flight["most"] == PARALLEL and _stored(store) == data


def test_a_failed_part_aborts_the_upload_leaving_nothing(
        store_options: dict[str, Any]) -> None:
    store = _store(store_options)
    sent: list[int] = []

    def fail_third(number: int) -> None:
        sent.append(number)
        if number == 3:
            raise ConnectionError("injected: the endpoint dropped part 3")

    _on_part(store, fail_third)
    with pytest.raises(ConnectionError, match="dropped part 3"):
        _write(store, os.urandom(8 * PART))
    client, bucket = store.objects.client, store.objects.bucket
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # the writer stopped at the failure: not every part was even tried
    assert 3 in sent and len(sent) < 8

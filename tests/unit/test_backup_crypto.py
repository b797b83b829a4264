"""Streamed AES-256-GCM: round trip, tamper/truncation/reorder detection, wrong key."""

from __future__ import annotations

import io
import os

import pytest

from controller.backups import crypto


def _seal(data: bytes, key: bytes, chunk: int = 4096) -> bytes:
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, key, chunk_size=chunk)
    for i in range(0, len(data), 1000):
        w.write(data[i:i + 1000])
    w.close()
    return sink.getvalue()


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_round_trip_any_size(size: int) -> None:
    key, data = os.urandom(32), os.urandom(size)
    sealed = _seal(data, key)
    assert crypto.DecryptingReader(io.BytesIO(sealed), key).read() == data
    assert b"".join(crypto.decrypt_chunks(io.BytesIO(sealed), key)) == data


def test_writer_reports_stored_checksum_and_sizes() -> None:
    import hashlib

    key, data = os.urandom(32), os.urandom(10_000)
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, key, chunk_size=4096)
    w.write(data)
    w.close()
    assert w.sha256.hexdigest() == hashlib.sha256(sink.getvalue()).hexdigest()
    assert (w.plain_size, w.stored_size) == (10_000, len(sink.getvalue()))


@pytest.mark.parametrize("where", [30, 4096 + 27 + 16 + 5, -3])
def test_any_flipped_byte_is_detected(where: int) -> None:
    key = os.urandom(32)
    sealed = bytearray(_seal(os.urandom(12_000), key))
    sealed[where] ^= 0x01
    with pytest.raises(crypto.DecryptionError, match="modified, corrupted or truncated"):
        crypto.DecryptingReader(io.BytesIO(bytes(sealed)), key).read()


def test_truncation_at_a_chunk_boundary_is_detected() -> None:
    key = os.urandom(32)
    sealed = _seal(os.urandom(3 * 4096 + 10), key)
    cut = crypto.HEADER.size + 2 * (4096 + crypto.TAG)  # drop the last two chunks whole
    with pytest.raises(crypto.DecryptionError):
        crypto.DecryptingReader(io.BytesIO(sealed[:cut]), key).read()


def test_reordered_chunks_are_detected() -> None:
    key = os.urandom(32)
    sealed = _seal(os.urandom(3 * 4096 + 10), key)
    h, r = crypto.HEADER.size, 4096 + crypto.TAG
    swapped = sealed[:h] + sealed[h + r:h + 2 * r] + sealed[h:h + r] + sealed[h + 2 * r:]
    with pytest.raises(crypto.DecryptionError):
        crypto.DecryptingReader(io.BytesIO(swapped), key).read()


def test_wrong_key_is_named_by_key_id_before_any_plaintext() -> None:
    key, other = os.urandom(32), os.urandom(32)
    sealed = _seal(b"x" * 5000, key)
    with pytest.raises(crypto.WrongKeyError) as err:
        next(crypto.decrypt_chunks(io.BytesIO(sealed), other, name="b1"))
    text = str(err.value)
    assert crypto.key_id(key) in text and crypto.key_id(other) in text
    assert key.hex() not in text and other.hex() not in text


def test_short_key_is_refused_with_a_fix() -> None:
    with pytest.raises(crypto.PermanentError, match="openssl rand -base64 32"):
        crypto.EncryptingWriter(io.BytesIO(), b"short")

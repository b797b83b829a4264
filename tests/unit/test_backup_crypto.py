"""Streamed AES-256-GCM: round trip, tamper/truncation/reorder detection, wrong key;
payloads bound to their backup (a swapped one is refused naming both), the stored
checksum checked before the last chunk, and old unbound payloads still read on it."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from controller.backups import DamagedBackup, crypto

A = crypto.Binding(id="20261201T010000Z_orders_daily", dataset="orders",
                   taken_at=1_764_550_800.25)
B = crypto.Binding(id="20261202T010000Z_orders_daily", dataset="orders",
                   taken_at=1_764_637_200.5)


def _seal(data: bytes, key: bytes, chunk: int = 4096,
          binding: crypto.Binding | None = A) -> bytes:
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, key, chunk_size=chunk, binding=binding)
    for i in range(0, len(data), 1000):
        w.write(data[i:i + 1000])
    w.close()
    return sink.getvalue()


def _expect(sealed: bytes, binding: crypto.Binding = A, bound: bool = True
            ) -> crypto.Expected:
    """What a catalog entry holding exactly `sealed` says about it."""
    return crypto.Expected(binding=binding, bound=bound,
                           sha256=hashlib.sha256(sealed).hexdigest(), size=len(sealed))


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_round_trip_any_size(size: int) -> None:
    key, data = os.urandom(32), os.urandom(size)
    sealed = _seal(data, key)
    assert crypto.DecryptingReader(io.BytesIO(sealed), key).read() == data
    assert b"".join(crypto.decrypt_chunks(io.BytesIO(sealed), key)) == data
    reader = crypto.DecryptingReader(io.BytesIO(sealed), key, expected=_expect(sealed))
    assert reader.read() == data


def test_writer_reports_stored_checksum_and_sizes() -> None:
    key, data = os.urandom(32), os.urandom(10_000)
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, key, chunk_size=4096, binding=A)
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
    header = crypto.parse_header(sealed).raw
    cut = len(header) + 2 * (4096 + crypto.TAG)  # drop the last two chunks whole
    with pytest.raises(crypto.DecryptionError):
        crypto.DecryptingReader(io.BytesIO(sealed[:cut]), key).read()


def test_reordered_chunks_are_detected() -> None:
    key = os.urandom(32)
    sealed = _seal(os.urandom(3 * 4096 + 10), key)
    h, r = len(crypto.parse_header(sealed).raw), 4096 + crypto.TAG
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
        crypto.EncryptingWriter(io.BytesIO(), b"short", binding=A)


def test_the_header_names_the_backup_the_payload_was_written_for() -> None:
    header = crypto.parse_header(_seal(b"x", os.urandom(32)))
    assert (header.format, header.binding) == (2, A)
    assert header.describe() == ("bound to 20261201T010000Z_orders_daily (data set orders, "
                                 "taken 2025-12-01 01:00:00 UTC) (format 2)")


def test_a_swapped_payload_is_refused_naming_both_before_any_plaintext() -> None:
    key = os.urandom(32)
    b_payload = _seal(os.urandom(9000), key, binding=B)
    chunks = crypto.decrypt_chunks(io.BytesIO(b_payload), key, name=A.id,
                                   expected=_expect(b_payload, binding=A))
    with pytest.raises(crypto.SwappedPayload) as err:
        next(chunks)
    text = str(err.value)
    assert f"the payload stored for backup {A}" in text
    assert f"is the payload of backup {B}" in text
    assert isinstance(err.value, DamagedBackup)


@pytest.mark.parametrize("field", ["id", "dataset", "takenAt"])
def test_the_binding_is_authenticated_with_every_chunk(field: str) -> None:
    # rewriting B's header to claim A's identity passes the binding check but not one chunk
    key = os.urandom(32)
    sealed = _seal(os.urandom(9000), key, binding=B)
    claimed = crypto.Binding(id=A.id if field == "id" else B.id,
                             dataset="orderz" if field == "dataset" else B.dataset,
                             taken_at=A.taken_at if field == "takenAt" else B.taken_at)
    header = crypto.parse_header(sealed)
    forged = crypto.pack_header(header.chunk, header.prefix, header.key_id, claimed)
    tampered = forged + sealed[len(header.raw):]
    with pytest.raises(crypto.AuthenticationFailed, match="authentication failed at chunk 0"):
        next(crypto.decrypt_chunks(io.BytesIO(tampered), key, name=claimed.id,
                                   expected=_expect(tampered, binding=claimed)))


def test_a_stored_checksum_other_than_the_catalogs_fails_before_the_last_chunk() -> None:
    key, data = os.urandom(32), os.urandom(3 * 4096 + 10)
    sealed = _seal(data, key)
    wrong = crypto.Expected(binding=A, bound=True, sha256="0" * 64, size=len(sealed))
    released = []
    with pytest.raises(crypto.ChecksumMismatch) as err:
        for chunk in crypto.decrypt_chunks(io.BytesIO(sealed), key, name=A.id, expected=wrong):
            released.append(chunk)
    assert b"".join(released) == data[:3 * 4096]  # never the final chunk
    assert f"{len(sealed)} bytes, sha256 {hashlib.sha256(sealed).hexdigest()[:16]}" in \
        str(err.value) and "the catalog says" in str(err.value)
    short = crypto.Expected(binding=A, bound=True, sha256=_expect(sealed).sha256,
                            size=len(sealed) - 1)
    with pytest.raises(crypto.ChecksumMismatch):
        crypto.DecryptingReader(io.BytesIO(sealed), key, expected=short).read()


def _sealed(data: bytes, key: bytes, binding: crypto.Binding = A
            ) -> tuple[bytes, crypto.Expected]:
    """A payload and what its catalog entry says of it, seal included."""
    sink = io.BytesIO()
    w = crypto.EncryptingWriter(sink, key, chunk_size=4096, binding=binding)
    w.write(data)
    w.close()
    sealed = sink.getvalue()
    return sealed, crypto.Expected(binding=binding, bound=True, seal=w.seal(),
                                   sha256=hashlib.sha256(sealed).hexdigest(), size=len(sealed))


def _drain(sealed: bytes, key: bytes, expected: crypto.Expected) -> list[bytes]:
    released: list[bytes] = []
    for chunk in crypto.decrypt_chunks(io.BytesIO(sealed), key, name=A.id, expected=expected):
        released.append(chunk)
    return released


def test_a_sealed_payload_proves_the_catalogs_checksum_without_hashing_it_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, data = os.urandom(32), os.urandom(3 * 4096 + 10)
    sealed, expected = _sealed(data, key)
    hashed: list[int] = []
    monkeypatch.setattr(crypto.BackgroundSha256, "update",
                        lambda self, chunk: hashed.append(len(chunk)))
    assert b"".join(_drain(sealed, key, expected)) == data
    assert hashed == []  # the seal proved the stored SHA-256; no byte was hashed again


def test_a_sealed_payload_refuses_what_its_checksum_would_have_refused() -> None:
    key, data = os.urandom(32), os.urandom(3 * 4096 + 10)
    sealed, expected = _sealed(data, key)
    # the same backup written again (same key, same binding, other nonces): every chunk
    # authenticates, only the stored object's checksum can tell it is not the cataloged one
    again, _ = _sealed(data, key)
    edits = {"re-written payload": (again, expected),
             "catalog's sha256 edited": (sealed, crypto.Expected(
                 binding=A, bound=True, seal=expected.seal, sha256="f" * 64,
                 size=expected.size)),
             "catalog's size edited": (sealed, crypto.Expected(
                 binding=A, bound=True, seal=expected.seal, sha256=expected.sha256,
                 size=expected.size + 1)),
             "catalog's seal edited": (sealed, crypto.Expected(
                 binding=A, bound=True, seal="0" * 64, sha256=expected.sha256,
                 size=expected.size)),
             "another key's seal": (sealed, crypto.Expected(
                 binding=A, bound=True, seal=_sealed(data, os.urandom(32))[1].seal,
                 sha256=expected.sha256, size=expected.size))}
    for what, (stored, said) in edits.items():
        released: list[bytes] = []
        with pytest.raises(crypto.ChecksumMismatch, match="do not carry the seal") as err:
            for chunk in crypto.decrypt_chunks(io.BytesIO(stored), key, name=A.id,
                                               expected=said):
                released.append(chunk)
        assert b"".join(released) == data[:3 * 4096], what  # never the final chunk
        assert f"the catalog says ({said.size} bytes, sha256 {said.sha256[:16]}" in \
            str(err.value), what


def test_an_unbound_format_1_payload_is_read_on_its_checksum_alone() -> None:
    key, data = os.urandom(32), os.urandom(9000)
    old = _seal(data, key, binding=None)
    header = crypto.parse_header(old)
    assert (header.format, header.binding, len(header.raw)) == (1, None, crypto.HEADER.size)
    assert header.describe().startswith("unbound (format 1)")
    # the catalog of an old backup (written unbound) matches: it is read
    reader = crypto.DecryptingReader(io.BytesIO(old), key, expected=_expect(old, bound=False))
    assert reader.read() == data
    # another old backup's payload in its place authenticates, but not its checksum
    other = _seal(data, key, binding=None)
    with pytest.raises(crypto.ChecksumMismatch):
        crypto.DecryptingReader(io.BytesIO(other), key, expected=_expect(old, bound=False)
                                ).read()


def test_an_unbound_payload_where_a_bound_one_was_written_is_refused() -> None:
    key = os.urandom(32)
    old = _seal(b"x" * 5000, key, binding=None)
    with pytest.raises(crypto.SwappedPayload, match=r"unbound \(format 1\): it was replaced"):
        next(crypto.decrypt_chunks(io.BytesIO(old), key, name=A.id,
                                   expected=_expect(old, bound=True)))


def test_a_wrong_key_is_configuration_not_a_damaged_backup() -> None:
    assert not issubclass(crypto.WrongKeyError, DamagedBackup)
    for damaged in (crypto.AuthenticationFailed, crypto.SwappedPayload, crypto.ChecksumMismatch):
        assert issubclass(damaged, DamagedBackup)

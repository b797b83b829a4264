"""AES-256-GCM encryption at rest for backups, streamed in authenticated chunks, each
bound to the backup it belongs to.

Owns the on-disk format of an encrypted backup object. One GCM tag over a whole
multi-gigabyte stream could only be checked after every byte was already handed to
`tar`, so the stream is cut into chunks (1 MiB by default), each sealed with its own
tag (a STREAM-style construction): nonce = 7 random bytes + chunk counter + a final-chunk
flag, the header as associated data. Reordering, truncation, a flipped byte or a wrong
key fail on the first bad chunk, before its plaintext is released, and memory stays at
one chunk whatever the backup size.

Format 2 (written since payloads are bound to their catalog entry):
  b"FOBKGCM2" | chunk size (u32) | nonce prefix (7) | key id (8) | binding length (u16) |
  binding: canonical JSON {"dataset", "id", "takenAt"} of the backup.
The whole header, binding included, is the associated data of every chunk, so a payload
authenticates only as the backup it was written for: a payload swapped with another
backup's (same key) or copied under the wrong name is refused before any plaintext, the
message naming the backup expected and the one the payload is.
Format 1 (b"FOBKGCM1", the same header without the binding; 27 bytes) is still read: such
an "unbound" payload is accepted only when its stored SHA-256 and size match the catalog's
(checked by `decrypt_chunks` when the caller gives them, as `CatalogStore.open_payload`
always does), and refused when the catalog says the backup was written bound.

The key id is HMAC-SHA256(key, "failover-backup-key-id")[:8]: it names the key without
revealing it, so a wrong key gets a clear error instead of "invalid tag".

The seal (format 2, recorded in the catalog beside the stored object's SHA-256 and size):
HMAC-SHA256 under a key derived from the data key over SHA-256(header | every chunk's
GCM tag), the stored SHA-256 and the stored size, taken as the payload is written. Why: a
reader that authenticated every chunk and finds their tags under this seal holds exactly
the bytes whose SHA-256 the catalog states (another stored object with the same header and
tags would be a GCM forgery; a catalog whose SHA-256, size or seal was edited no longer
matches), so a restore proves the stored object's SHA-256 for ~16 bytes of hashing per
chunk instead of hashing every stored byte again — on 2 cores that pass was half a
restore's CPU. Verification (`verify.CatalogVerifier`) still hashes every byte. An entry
without a seal (written before it, or unbound) is checked by hashing, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.backups import DamagedBackup
from controller.backups.naming import iso
from controller.model import PermanentError

MAGIC = b"FOBKGCM1"
MAGIC_BOUND = b"FOBKGCM2"
HEADER = struct.Struct(">8sI7s8s")
BINDING_LENGTH = struct.Struct(">H")
MAX_BINDING = 1024
MAX_HEADER = HEADER.size + BINDING_LENGTH.size + MAX_BINDING
TAG = 16
DEFAULT_CHUNK = 1 << 20
ALGORITHM = "AES-256-GCM"
FORMAT_BOUND = 2
HASH_AHEAD = 8  # chunks handed to a SHA-256 ahead of it (`BackgroundSha256`)


class DecryptionError(PermanentError):
    """The stored bytes cannot be decrypted (see the subclasses for whose problem)."""


class WrongKeyError(DecryptionError):
    """The payload was written with another key: a problem of configuration, not of the
    backup (every backup of the store would fail the same way)."""


class AuthenticationFailed(DecryptionError, DamagedBackup):
    """The stored bytes do not authenticate: tampering, corruption or truncation."""


class SwappedPayload(DecryptionError, DamagedBackup):
    """The payload is another backup's (swapped or copied under the wrong name), or an
    unbound one where the catalog says a bound one was written."""


class ChecksumMismatch(DamagedBackup):
    """The stored object's SHA-256 or size is not the catalog's."""


@dataclass(frozen=True)
class Binding:
    """Who a payload is: the catalog identity authenticated with every chunk."""

    id: str
    dataset: str
    taken_at: float

    def encode(self) -> bytes:
        return json.dumps({"dataset": self.dataset, "id": self.id, "takenAt": self.taken_at},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Binding:
        e = json.loads(data)
        return cls(id=str(e["id"]), dataset=str(e["dataset"]), taken_at=float(e["takenAt"]))

    def __str__(self) -> str:
        return f"{self.id} (data set {self.dataset}, taken {iso(self.taken_at)})"


@dataclass(frozen=True)
class Expected:
    """What the catalog says a payload is: checked while it streams."""

    binding: Binding
    bound: bool  # written in format 2: an unbound (format 1) payload is refused
    sha256: str
    size: int
    seal: str | None = None  # bound payloads only: proves `sha256` without hashing again


@dataclass(frozen=True)
class Header:
    format: int
    chunk: int
    prefix: bytes
    key_id: str
    binding: Binding | None
    raw: bytes  # the associated data of every chunk

    def describe(self) -> str:
        if self.binding is None:
            return ("unbound (format 1): accepted only when its SHA-256 and size match the "
                    "catalog's")
        return f"bound to {self.binding} (format {self.format})"


def key_id(key: bytes) -> str:
    return hmac.new(key, b"failover-backup-key-id", hashlib.sha256).hexdigest()[:16]


def _seal_key(key: bytes) -> bytes:
    return hmac.new(key, b"failover-backup-seal", hashlib.sha256).digest()


def seal(key: bytes, tags: bytes, sha256: str, size: int) -> str:
    """The seal of a payload: `tags` is SHA-256(header | every chunk's GCM tag), `sha256`
    and `size` are the stored object's."""
    return hmac.new(_seal_key(key), b"failover-backup-seal-1\0" + tags + sha256.encode()
                    + struct.pack(">Q", size), hashlib.sha256).hexdigest()


def check_key(key: bytes) -> bytes:
    if len(key) != 32:
        raise PermanentError(f"the backup encryption key must be 32 bytes (AES-256), "
                             f"got {len(key)}; generate one with `openssl rand -base64 32`")
    return key


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


def pack_header(chunk: int, prefix: bytes, kid: str, binding: Binding | None) -> bytes:
    if binding is None:
        return HEADER.pack(MAGIC, chunk, prefix, bytes.fromhex(kid))
    ident = binding.encode()
    if len(ident) > MAX_BINDING:
        raise PermanentError(f"backup id {binding.id!r} too long to bind ({len(ident)} bytes "
                             f"of identity, at most {MAX_BINDING})")
    return (HEADER.pack(MAGIC_BOUND, chunk, prefix, bytes.fromhex(kid))
            + BINDING_LENGTH.pack(len(ident)) + ident)


def parse_header(data: bytes, *, name: str = "backup") -> Header:
    """The header at the start of `data` (which may hold more); AuthenticationFailed when
    it is not one (too short, bad magic, unreadable binding)."""
    if len(data) < HEADER.size:
        raise AuthenticationFailed(f"{name}: too short to be an encrypted backup")
    magic, chunk, prefix, kid = HEADER.unpack_from(data)
    if magic == MAGIC:
        return Header(1, chunk, prefix, kid.hex(), None, data[:HEADER.size])
    if magic != MAGIC_BOUND:
        raise AuthenticationFailed(f"{name}: not an encrypted backup (bad magic header)")
    end = HEADER.size + BINDING_LENGTH.size
    if len(data) < end:
        raise AuthenticationFailed(f"{name}: its header is truncated")
    (length,) = BINDING_LENGTH.unpack_from(data, HEADER.size)
    damaged = "the stored backup was modified, corrupted or truncated"
    if length > MAX_BINDING or len(data) < end + length:
        raise AuthenticationFailed(f"{name}: its header's binding is truncated or too long: "
                                   f"{damaged}")
    try:
        binding = Binding.decode(data[end:end + length])
    except (ValueError, KeyError, TypeError):
        raise AuthenticationFailed(f"{name}: its header's binding is unreadable: {damaged}") \
            from None
    return Header(FORMAT_BOUND, chunk, prefix, kid.hex(), binding, data[:end + length])


def check_binding(header: Header, expected: Expected, *, name: str) -> None:
    """Refuse a payload that is not the cataloged backup's (SwappedPayload)."""
    if header.binding is None:
        if expected.bound:
            raise SwappedPayload(
                f"{name}: the catalog entry says its payload was written bound to "
                f"{expected.binding} (format {FORMAT_BOUND}), but the stored payload is "
                "unbound (format 1): it was replaced by an older or foreign payload; restore "
                "another backup")
        return
    if header.binding != expected.binding:
        raise SwappedPayload(
            f"{name}: the payload stored for backup {expected.binding} is the payload of "
            f"backup {header.binding}: swapped or copied under the wrong name; it is not "
            "restored (put the right payload back, or restore another backup)")


class EncryptingWriter:
    """A write-only binary stream: plaintext in, header + sealed chunks out to `sink`.

    `binding` names the backup the payload belongs to (format 2); None writes an unbound
    format 1 payload (what older controllers wrote; kept for tests of compatibility).
    Tracks the SHA-256 and size of what it wrote (the stored object's checksum), the
    plaintext size and, from the chunks' tags, the payload's `seal()`. `close()` seals the
    final chunk; it does not close `sink`.
    """

    def __init__(self, sink: BinaryIO, key: bytes, *, binding: Binding | None,
                 chunk_size: int = DEFAULT_CHUNK):
        self._sink = sink
        self._key = check_key(key)
        self._aead = AESGCM(self._key)
        self._chunk = chunk_size
        self._prefix = os.urandom(7)
        self.header = pack_header(chunk_size, self._prefix, key_id(key), binding)
        self._tags = hashlib.sha256(self.header)
        self._buf = bytearray()
        self._counter = 0
        self.sha256 = BackgroundSha256()
        self.stored_size = 0
        self.plain_size = 0
        self.closed = False
        self._emit(self.header)

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self.sha256.update(data)
        self.stored_size += len(data)

    def _seal_chunk(self, data: bytes | memoryview, final: bool) -> None:
        if self._counter >= 0xFFFFFFFF:
            raise PermanentError("backup too large for one encrypted stream (2^32 chunks)")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, final), data,
                                    self.header)
        self._tags.update(sealed[-TAG:])
        self._emit(sealed)
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.plain_size += n
        self._buf += data
        done = 0  # sealed from views of the buffer (no copy), then dropped at once
        with memoryview(self._buf) as view:
            while len(self._buf) - done > self._chunk:
                self._seal_chunk(view[done:done + self._chunk], False)
                done += self._chunk
        del self._buf[:done]
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._seal_chunk(bytes(self._buf), True)
            self._buf.clear()

    def seal(self) -> str:
        """The payload's seal (after `close()`), recorded in the catalog."""
        assert self.closed, "seal() of an open payload"
        return seal(self._key, self._tags.digest(), self.sha256.hexdigest(), self.stored_size)


class BackgroundSha256:
    """A SHA-256 taken in a thread of its own, in order: hashlib lets go of the GIL on
    large buffers, so the hash runs beside the caller's work (decrypting, encrypting,
    tar) instead of after it. At most `HASH_AHEAD` updates wait for it; `update` takes
    immutable bytes (hashed later), `hexdigest` waits for the rest, `close` drops what
    waits (the thread also ends once the hash is garbage)."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        self._pending: deque[Future[None]] = deque()

    def update(self, data: bytes) -> None:
        if len(self._pending) >= HASH_AHEAD:
            self._pending.popleft().result()
        self._pending.append(self._worker.submit(self._sha256.update, data))

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._sha256.hexdigest()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


class _Counted:
    """Reads from `src`, counting every byte read and, with `hashing`, hashing it (the
    stored object's SHA-256, in the background: `BackgroundSha256`)."""

    def __init__(self, src: BinaryIO, *, hashing: bool):
        self.src, self.size = src, 0
        self._sha256 = BackgroundSha256() if hashing else None

    def read_exact(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            part = self.src.read(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        if self._sha256 is not None:
            self._sha256.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        assert self._sha256 is not None, "hexdigest() of a stream read without hashing"
        return self._sha256.hexdigest()

    def close(self) -> None:
        if self._sha256 is not None:
            self._sha256.close()


def _read_header(src: _Counted, name: str) -> Header:
    data = src.read_exact(HEADER.size)
    if data[:8] == MAGIC_BOUND and len(data) == HEADER.size:
        data += src.read_exact(BINDING_LENGTH.size)
        if len(data) == HEADER.size + BINDING_LENGTH.size:
            (length,) = BINDING_LENGTH.unpack_from(data, HEADER.size)
            data += src.read_exact(min(length, MAX_BINDING + 1))
    return parse_header(data, name=name)


def decrypt_chunks(src: BinaryIO, key: bytes, *, name: str = "backup",
                   expected: Expected | None = None) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise on the first bad one, before its
    plaintext is released: AuthenticationFailed (modified, corrupted, truncated),
    WrongKeyError, and with `expected` (the catalog's word) SwappedPayload (another
    backup's payload, checked before anything is decrypted) and ChecksumMismatch (the
    stored SHA-256 or size is not the catalog's, checked before the final chunk: proven by
    the seal when the catalog has one, else hashed)."""
    counted = _Counted(src, hashing=expected is not None and expected.seal is None)
    try:
        yield from _decrypt(counted, key, name, expected)
    finally:
        counted.close()


def _decrypt(counted: _Counted, key: bytes, name: str, expected: Expected | None
             ) -> Iterator[bytes]:
    aead = AESGCM(check_key(key))
    header = _read_header(counted, name)
    if expected is not None:
        check_binding(header, expected, name=name)
    if header.key_id != key_id(key):
        raise WrongKeyError(
            f"{name}: wrong encryption key: the backup was encrypted with key id "
            f"{header.key_id}, the configured key has id {key_id(key)}; configure the key it "
            "was written with")
    record = header.chunk + TAG
    tags = hashlib.sha256(header.raw)
    counter = 0
    pending = counted.read_exact(record)
    while True:
        following = counted.read_exact(record) if len(pending) == record else b""
        final = not following
        try:
            plain = aead.decrypt(_nonce(header.prefix, counter, final), pending, header.raw)
        except InvalidTag:
            where = "final chunk" if final else f"chunk {counter}"
            raise AuthenticationFailed(
                f"{name}: authentication failed at {where} (offset ~{counter * record} bytes): "
                "the stored backup was modified, corrupted or truncated") from None
        tags.update(pending[-TAG:])
        if final and expected is not None:
            _check_stored(counted, expected, name, key, tags.digest())
        yield plain
        if final:
            return
        pending, counter = following, counter + 1


def _check_stored(counted: _Counted, expected: Expected, name: str, key: bytes,
                  tags: bytes) -> None:
    if expected.seal is not None:
        if counted.size != expected.size or not hmac.compare_digest(
                seal(key, tags, expected.sha256, expected.size), expected.seal):
            raise ChecksumMismatch(
                f"{name}: the stored payload is not the one cataloged: {counted.size} bytes "
                f"whose chunks do not carry the seal of what the catalog says ({expected.size}"
                f" bytes, sha256 {expected.sha256[:16]}…): the payload or its catalog entry "
                "was changed since it was written; it is not restored (restore another "
                "backup)")
        return
    digest = counted.hexdigest()
    if counted.size != expected.size or digest != expected.sha256:
        raise ChecksumMismatch(
            f"{name}: the stored payload is not the one cataloged: {counted.size} bytes, "
            f"sha256 {digest[:16]}…, the catalog says {expected.size} bytes, sha256 "
            f"{expected.sha256[:16]}…; it is not restored (restore another backup)")


class DecryptingReader:
    """A read-only binary stream over `decrypt_chunks`, for `tarfile` and uploads."""

    def __init__(self, src: BinaryIO, key: bytes, *, name: str = "backup",
                 expected: Expected | None = None):
        self._chunks = decrypt_chunks(src, key, name=name, expected=expected)
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buf) < n):
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                self._done = True
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

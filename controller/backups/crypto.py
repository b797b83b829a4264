"""AES-256-GCM encryption at rest for backups, streamed in authenticated chunks.

Owns the on-disk format of an encrypted backup object. One GCM tag over a whole
multi-gigabyte stream could only be checked after every byte was already handed to
`tar`, so the stream is cut into chunks (1 MiB by default), each sealed with its own
tag (a STREAM-style construction): nonce = 7 random bytes + chunk counter + a final-chunk
flag, the header as associated data. Reordering, truncation, a flipped byte or a wrong
key fail on the first bad chunk, before its plaintext is released, and memory stays at
one chunk whatever the backup size.

Header: b"FOBKGCM1" | chunk size (u32) | nonce prefix (7) | key id (8) -- 27 bytes.
The key id is HMAC-SHA256(key, "failover-backup-key-id")[:8]: it names the key without
revealing it, so a wrong key gets a clear error instead of "invalid tag".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from controller.model import PermanentError

MAGIC = b"FOBKGCM1"
HEADER = struct.Struct(">8sI7s8s")
TAG = 16
DEFAULT_CHUNK = 1 << 20
ALGORITHM = "AES-256-GCM"


class DecryptionError(PermanentError):
    """The stored bytes cannot be authenticated: wrong key, tampering or truncation."""


class WrongKeyError(DecryptionError):
    pass


def key_id(key: bytes) -> str:
    return hmac.new(key, b"failover-backup-key-id", hashlib.sha256).hexdigest()[:16]


def check_key(key: bytes) -> bytes:
    if len(key) != 32:
        raise PermanentError(f"the backup encryption key must be 32 bytes (AES-256), "
                             f"got {len(key)}; generate one with `openssl rand -base64 32`")
    return key


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


class EncryptingWriter:
    """A write-only binary stream: plaintext in, header + sealed chunks out to `sink`.

    Tracks the SHA-256 and size of what it wrote (the stored object's checksum) and the
    plaintext size. `close()` seals the final chunk; it does not close `sink`.
    """

    def __init__(self, sink: BinaryIO, key: bytes, *, chunk_size: int = DEFAULT_CHUNK):
        self._sink = sink
        self._aead = AESGCM(check_key(key))
        self._chunk = chunk_size
        self._prefix = os.urandom(7)
        self.header = HEADER.pack(MAGIC, chunk_size, self._prefix, bytes.fromhex(key_id(key)))
        self._buf = bytearray()
        self._counter = 0
        self.sha256 = hashlib.sha256()
        self.stored_size = 0
        self.plain_size = 0
        self.closed = False
        self._emit(self.header)

    def _emit(self, data: bytes) -> None:
        self._sink.write(data)
        self.sha256.update(data)
        self.stored_size += len(data)

    def _seal(self, data: bytes, final: bool) -> None:
        if self._counter >= 0xFFFFFFFF:
            raise PermanentError("backup too large for one encrypted stream (2^32 chunks)")
        self._emit(self._aead.encrypt(_nonce(self._prefix, self._counter, final), data,
                                      self.header))
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.plain_size += n
        self._buf += data
        while len(self._buf) > self._chunk:
            self._seal(bytes(self._buf[: self._chunk]), False)
            del self._buf[: self._chunk]
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._seal(bytes(self._buf), True)
            self._buf.clear()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = src.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def decrypt_chunks(src: BinaryIO, key: bytes, *, name: str = "backup") -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise DecryptionError on the first bad one."""
    aead = AESGCM(check_key(key))
    header = _read_exact(src, HEADER.size)
    if len(header) != HEADER.size:
        raise DecryptionError(f"{name}: too short to be an encrypted backup")
    magic, chunk, prefix, kid = HEADER.unpack(header)
    if magic != MAGIC:
        raise DecryptionError(f"{name}: not an encrypted backup (bad magic header)")
    if kid.hex() != key_id(key):
        raise WrongKeyError(
            f"{name}: wrong encryption key: the backup was encrypted with key id {kid.hex()}, "
            f"the configured key has id {key_id(key)}; configure the key it was written with")
    record = chunk + TAG
    counter = 0
    pending = _read_exact(src, record)
    while True:
        following = _read_exact(src, record) if len(pending) == record else b""
        final = not following
        try:
            plain = aead.decrypt(_nonce(prefix, counter, final), pending, header)
        except InvalidTag:
            where = "final chunk" if final else f"chunk {counter}"
            raise DecryptionError(
                f"{name}: authentication failed at {where} (offset ~{counter * record} bytes): "
                "the stored backup was modified, corrupted or truncated") from None
        yield plain
        if final:
            return
        pending, counter = following, counter + 1


class DecryptingReader:
    """A read-only binary stream over `decrypt_chunks`, for `tarfile` and uploads."""

    def __init__(self, src: BinaryIO, key: bytes, *, name: str = "backup"):
        self._chunks = decrypt_chunks(src, key, name=name)
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

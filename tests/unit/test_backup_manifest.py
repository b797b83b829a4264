"""The in-stream half of pg_verifybackup (`controller.backups.manifest`): a restore skips
pg_verifybackup's checksum pass only when every file the manifest lists was seen in the
tar stream with the SHA-256 the manifest gives; anything less leaves the checksums to
pg_verifybackup, which then names the file that differs."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import pytest

from controller.backups.manifest import StreamedFiles

LONG = "base/16384/" + "x" * 120  # beyond ustar's 100 bytes: a pax header carries it


def _payload(files: dict[str, bytes], *, listed: dict[str, bytes] | None = None,
             algorithm: str = "SHA256", fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar like the catalog's: `./`-prefixed names, the manifest (of `listed`, default
    `files`) first, as sorted by name."""
    entries = [{"Path": path, "Size": len(data), "Checksum-Algorithm": algorithm,
                "Checksum": hashlib.sha256(data).hexdigest()}
               for path, data in (files if listed is None else listed).items()]
    members = {"backup_manifest": json.dumps({"Files": entries}).encode(), **files}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=fmt) as tar:
        dirs = sorted({p.rsplit("/", 1)[0] for p in members if "/" in p})
        for d in dirs:
            info = tarfile.TarInfo(f"./{d}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for path, data in members.items():
            info = tarfile.TarInfo(f"./{path}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


FILES = {"PG_VERSION": b"15\n", "global/pg_control": bytes(range(256)) * 32,
         "base/1/1259": random.Random(1).randbytes(70_001), "base/1/empty": b"",
         LONG: b"long name\n"}


def _fed(stream: bytes, seed: int = 0) -> StreamedFiles:
    """Fed in chunks of random sizes, as the decrypting reader hands them over."""
    files, rng, at = StreamedFiles(), random.Random(seed), 0
    while at < len(stream):
        step = rng.choice([1, 7, 511, 512, 513, 4096, 65536])
        files.feed(stream[at:at + step])
        at += step
    return files


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_every_listed_file_matching_is_a_proof(fmt: int) -> None:
    for seed in range(3):
        verdict = _fed(_payload(FILES, fmt=fmt), seed).verdict()
        assert verdict.proven, verdict.detail
        assert verdict.detail == ("SHA-256 of 5 files checked against backup_manifest while "
                                  "streaming")


def test_a_file_that_differs_from_the_manifest_is_left_to_pg_verifybackup() -> None:
    changed = {**FILES, "base/1/1259": FILES["base/1/1259"][:-1] + b"?"}
    verdict = _fed(_payload(changed, listed=FILES)).verdict()
    assert not verdict.proven and "base/1/1259 differs" in verdict.detail


def test_a_listed_file_missing_from_the_stream_is_no_proof() -> None:
    shown = {k: v for k, v in FILES.items() if k != "global/pg_control"}
    verdict = _fed(_payload(shown, listed=FILES)).verdict()
    assert not verdict.proven and "global/pg_control is not in the stream" in verdict.detail


def test_files_pg_verifybackup_ignores_are_ignored_here_too() -> None:
    listed = {**FILES, "postgresql.auto.conf": b"primary_conninfo = 'x'\n",
              "pg_wal/000000010000000000000002": b"wal"}
    shown = {**FILES, "postgresql.auto.conf": b"# rewritten by the standby tool\n"}
    assert _fed(_payload(shown, listed=listed)).verdict().proven


def test_another_checksum_algorithm_is_left_to_pg_verifybackup() -> None:
    verdict = _fed(_payload(FILES, algorithm="CRC32C")).verdict()
    assert not verdict.proven and "CRC32C, not SHA256" in verdict.detail


def test_a_tar_format_backup_is_left_to_pg_verifybackup() -> None:
    inner = _payload(FILES)  # its files are inside base.tar: none is seen here
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w|") as tar:
        info = tarfile.TarInfo("./base.tar")
        info.size = len(inner)
        tar.addfile(info, io.BytesIO(inner))
    verdict = _fed(outer.getvalue()).verdict()
    assert not verdict.proven and "no backup_manifest" in verdict.detail


def test_a_stream_that_is_not_tar_is_no_proof() -> None:
    verdict = _fed(random.Random(2).randbytes(4096)).verdict()
    assert not verdict.proven and "could not be followed" in verdict.detail

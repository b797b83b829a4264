"""Filesystem backup store: the catalog on a local or mounted directory (NFS, a disk).

Owns the file primitives of `CatalogStore`: every object is written to a temporary file
in the same directory, fsynced and renamed, so a crash never leaves a half-written
payload or catalog entry under its real name; readers stream from the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import Field

from controller.backups import naming
from controller.backups.catalog import CatalogStore, Peek, StoreOptions, Stray


class FilesystemStoreOptions(StoreOptions):
    path: str = Field(description="root directory of the catalog")


class FileObjects:
    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"object key {key!r} escapes the store root")
        return path

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def reader(self, key: str) -> BinaryIO:
        return self._path(key).open("rb", buffering=0)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as fh:
            fh.write(data)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def peek(self, key: str, n: int) -> Peek:
        """A file has no ETag: the integrity pass checks its size (and a payload's
        binding); its SHA-256 is checked as it streams."""
        with self._path(key).open("rb", buffering=0) as fh:
            return Peek(fh.read(n), os.fstat(fh.fileno()).st_size, None)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "catalog.json").exists())

    def uncataloged(self) -> list[Stray]:
        if not self.root.is_dir():
            return []
        return sorted(Stray(p.name, payload.stat().st_mtime) for p in self.root.iterdir()
                      if (payload := self.root / naming.payload_key(p.name)).is_file()
                      and not (p / "catalog.json").exists())

    def location(self, key: str) -> str:
        return (self.root / key).as_uri() if self.root.is_absolute() else str(self.root / key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        if path.parent != self.root.resolve() and path.parent.is_dir() \
                and not any(path.parent.iterdir()):
            path.parent.rmdir()  # a backup's directory goes with its last object


class FilesystemBackupStore(CatalogStore):
    Options = FilesystemStoreOptions
    options: FilesystemStoreOptions

    def _objects(self) -> FileObjects:
        return FileObjects(Path(self.options.path))

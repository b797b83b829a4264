"""Free page reporting: memory this VM hands back to its hypervisor, and holding it off
while a benchmark runs.

A guest kernel with virtio-balloon free page reporting tells the hypervisor about the
2 MiB blocks it has freed, and the hypervisor takes their memory back; the next write
into such a block faults on the host. Measured on the project's build VM (a Firecracker
kernel whose `page_reporting` module reports a block as soon as it is free:
`min_free_ms=0`; 223 GB reported in 3.5 hours): touching 12 GB of memory never used
took 2.65 s/GB, the same 12 GB again 0.74 s/GB; tar writing 1 GB of restored files
spent 2.56 s copying into the page cache in one run and 0.3 s in another
(`copy_folio_from_iter_atomic`, perf). A restore benchmark at 1 GB then measures which
memory the kernel happened to hand each run more than either side's work.

`held(ms)` asks the kernel not to report blocks freed less than `ms` ago while a
benchmark runs (root, and a kernel with the `min_free_ms` parameter), and puts the old
value back after: memory a run frees is still the guest's when the next run writes, as
on a machine without a hypervisor taking it back. Both sides of a comparison run under
the same setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

PARAMS = Path("/sys/module/page_reporting/parameters")
MIN_FREE_MS = PARAMS / "min_free_ms"


def describe() -> str:
    """One sentence on whether and how this machine reports freed memory."""
    if not PARAMS.is_dir():
        return "free page reporting: not in this kernel (memory freed stays the guest's)"
    order = _read(PARAMS / "page_reporting_order")
    held_ms = _read(MIN_FREE_MS)
    when = ("as soon as they are free" if held_ms == "0" else
            f"once free for {held_ms} ms" if held_ms is not None else "after ~2 s free")
    return (f"free page reporting: on (blocks of order {order or '?'} handed back to the "
            f"hypervisor {when}; writing into them again faults on the host)")


@contextlib.contextmanager
def held(ms: int | None) -> Iterator[str]:
    """While the block runs, blocks freed less than `ms` ago are not reported (None:
    nothing changed); yields a sentence saying what was done, restores the old value."""
    if ms is None:
        yield describe()
        return
    try:
        old = MIN_FREE_MS.read_text().strip()
        MIN_FREE_MS.write_text(str(ms))
    except OSError as exc:
        raise SystemExit(f"--hold-free-pages needs root and a kernel with {MIN_FREE_MS}: "
                         f"{exc}") from None
    try:
        yield (f"free page reporting held off: blocks freed less than {ms} ms ago stay the "
               f"guest's while this runs ({MIN_FREE_MS} {old} -> {ms}, put back after)")
    finally:
        MIN_FREE_MS.write_text(old)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None

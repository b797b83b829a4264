"""The fakes' shared state file: a fault injected by one process is never undone by another
process probing at the same moment (the operator e2e tests break a service this way)."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
from pathlib import Path

from controller import testing


def _probe_forever(state: str, stop: multiprocessing.synchronize.Event) -> None:
    probe = testing.FakeProbe(testing.FakeProbe.Options(key="edge-a", traffic="edge",
                                                        state_file=state))
    while not stop.is_set():
        asyncio.run(probe.check())


def test_a_fault_injected_while_other_processes_probe_is_kept(tmp_path: Path) -> None:
    state = str(tmp_path / "world.json")
    stop = multiprocessing.Event()
    probers = [multiprocessing.Process(target=_probe_forever, args=(state, stop))
               for _ in range(2)]
    for p in probers:
        p.start()
    try:
        for i in range(300):
            testing.set_health(f"site-{i}", False, state_file=state)
        lost = [i for i in range(300) if asyncio.run(testing.FakeProbe(
            testing.FakeProbe.Options(key=f"site-{i}", state_file=state)).check()).ok]
        assert lost == [], f"{len(lost)} of 300 injected faults were overwritten"
    finally:
        stop.set()
        for p in probers:
            p.join(timeout=10)

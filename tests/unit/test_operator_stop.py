"""Stopping the operator (`failoverctl operator` sets `stop` from its SIGTERM handler):
`run` returns once `stop` is set, even when the handler ran on the waiting thread between
Event.wait's look at the flag and its sleep — the flag is then set with no waiter to
wake, and a wait without a timeout would never return (the pod killed at the end of its
grace period, its Lease never released)."""

from __future__ import annotations

import threading
from pathlib import Path

from controller.journal import Journal
from controller.operator import Operator
from controller.testing_kube import FakeKube


class LostWakeup(threading.Event):
    """What that race leaves behind: `set` sets the flag and wakes nobody."""

    def set(self) -> None:
        with self._cond:
            self._flag = True


def test_a_stop_whose_wakeup_was_lost_still_stops_the_operator(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    op = Operator(FakeKube(), namespace="failover", journal=journal, identity="r1")
    stop = LostWakeup()
    runner = threading.Thread(target=op.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert not stop.wait(0.3) and runner.is_alive()  # running, waiting for `stop`
        stop.set()
        runner.join(timeout=30)
        assert not runner.is_alive(), "the operator did not stop: the stop was never seen"
    finally:
        journal.close()

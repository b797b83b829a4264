"""Stopping the operator (`failoverctl operator` sets `stop` from its SIGTERM handler):
`run` returns once `stop` is set, even when the handler ran on the waiting thread between
Event.wait's look at the flag and its sleep — the flag is then set with no waiter to
wake, and a wait without a timeout would never return (the pod killed at the end of its
grace period, its Lease never released); and the last archive attempt gets every plan's
archiver even when the lead goes while it stops."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from controller import operator as operator_module
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


def test_runs_left_unarchived_get_their_last_attempt_when_the_lead_goes_as_it_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The elector's thread may stand down while the operator stops (its last round finds
    the lead gone), dropping every plan's runtime; the last archive attempt must still
    get each plan's archiver (it was handed none: runs the store refused stayed unarchived
    until the next start, with no word in the log)."""
    journal = Journal(tmp_path / "journal.db")
    op = Operator(FakeKube(), namespace="failover", journal=journal, identity="r1")
    archiver = object()
    op._runtimes["orders"] = SimpleNamespace(  # type: ignore[assignment]
        engine=SimpleNamespace(ender=SimpleNamespace(archiver=archiver)), scheduler=None)
    monkeypatch.setattr(op._probes, "stop", lambda scheduler: None)
    stopping = op.elector.stop

    def stop_and_lose_the_lead() -> None:  # what the elector's thread does meanwhile
        stopping()
        op._stand_down()

    monkeypatch.setattr(op.elector, "stop", stop_and_lose_the_lead)
    given: list[list[object]] = []
    monkeypatch.setattr(operator_module, "flush",
                        lambda archivers, deadline: given.append(list(archivers)))
    stop = threading.Event()
    stop.set()
    try:
        op.run(stop)
    finally:
        journal.close()
    assert given == [[archiver]] and op._runtimes == {}

"""`controller/readiness.py` runs its checks on a shared, bounded set of daemon threads: a
check that never answers (a backend whose socket hangs) holds one thread however often
readiness is asked again, never holds up the process's exit, and does not keep the
other checks from running; more checks than threads queue (a burst of new plans) and
pass; with every thread held by checks that do not answer, a check fails, saying so."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from multiprocessing.queues import Queue
from pathlib import Path

import pytest

from controller import readiness
from controller.readiness import Check

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hang() -> Iterator[threading.Event]:
    """Set it to let the hung checks answer (at the end of the test)."""
    answer = threading.Event()
    yield answer
    answer.set()


def _hung(answer: threading.Event) -> str:
    answer.wait()
    return "answered at last"


def test_a_hung_check_asked_again_and_again_holds_one_thread(
        hang: threading.Event) -> None:
    started: list[threading.Thread] = []

    def hung() -> str:
        started.append(threading.current_thread())
        hang.wait()
        return "answered at last"

    for _ in range(20):  # readiness asked again and again (failoverctl ready, /readyz)
        assert readiness._run("shop", "backend edge", hung, 0.05) == Check(
            "backend edge", False, "no answer within 0.05 s")
    assert readiness._run("shop", "backend dns", lambda: "zone answers", 30) == Check(
        "backend dns", True, "zone answers")  # the others still run
    assert len(started) == 1, started
    assert started[0].daemon


def test_with_every_thread_held_by_hung_checks_a_check_fails_saying_so(
        hang: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "_WORKERS", readiness._Workers(2))
    for name in ("backend edge", "backend dns"):
        assert readiness._run("shop", name, partial(_hung, hang), 0.05) == Check(
            name, False, "no answer within 0.05 s")
    check = readiness._run("shop", "backend db", lambda: "answers", 0.2)
    assert check == Check("backend db", False, (
        "not run: all 2 readiness workers are held by checks that have not answered "
        "(shop: backend dns, shop: backend edge)"))
    hang.set()  # they answer: their threads take the next checks
    deadline = time.monotonic() + 30
    while (check := readiness._run("shop", "backend db", lambda: "answers", 30)) != Check(
            "backend db", True, "answers") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check == Check("backend db", True, "answers")


def test_a_burst_of_checks_beyond_the_threads_queues_and_every_one_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readiness, "_WORKERS", readiness._Workers(2))

    def slow(i: int) -> str:
        time.sleep(0.02)  # a backend that answers, a little slowly
        return f"answers {i}"

    results: dict[int, Check | None] = {}
    callers = [threading.Thread(target=lambda i=i: results.__setitem__(i, readiness._run(
        f"plan-{i}", "backend edge", partial(slow, i), 5))) for i in range(40)]
    for t in callers:  # 40 plans' readiness at once (an operator's start)
        t.start()
    for t in callers:
        t.join(timeout=120)
    assert results == {i: Check("backend edge", True, f"answers {i}") for i in range(40)}


def test_a_hung_check_does_not_hold_up_the_exit() -> None:
    code = ("import threading; from controller import readiness; "
            "print(readiness._run('shop', 'backend edge', threading.Event().wait, 0.1))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert "no answer within 0.1 s" in out.stdout, out.stderr[-2000:]


def _check_in_child(out: Queue[Check | None]) -> None:
    out.put(readiness._run("shop", "backend dns", lambda: "zone answers", 30))


def test_a_forked_process_runs_its_checks_on_threads_of_its_own() -> None:
    # the simulation forks its workers after the parent ran checks: the parent's threads
    # are not in the child
    assert readiness._run("shop", "backend edge", lambda: "answers", 30) is not None
    ctx = multiprocessing.get_context("fork")
    out: Queue[Check | None] = ctx.Queue()
    child = ctx.Process(target=_check_in_child, args=(out,))
    child.start()
    try:
        assert out.get(timeout=60) == Check("backend dns", True, "zone answers")
    finally:
        child.join(timeout=60)

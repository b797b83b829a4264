"""The launcher base: a server that exits while starting, or never answers, is a
`ServerError` naming it with the tail of its log (never a hang, never a silent skip);
`free_port` gives a port nothing listens on; a launcher is a context manager that stops
what it started however the block ends."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from controller.drill.processes import alive, terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready


def test_free_port_is_a_port_nothing_listens_on() -> None:
    port = free_port()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))


def test_a_server_that_exits_while_starting_is_named_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; "
                                 "sys.exit('listen: address already in use')"], stderr=out)
    proc.wait(30)
    with pytest.raises(ServerError, match=r"^toy exited \(1\) while waiting for toy on port "
                                          r"9: listen: address already in use"):
        wait_ready("toy on port 9", lambda: False, timeout=60, watch=[("toy", proc, log)])


def test_a_server_that_never_answers_is_an_error_naming_the_last_answer() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ServerError, match=r"toy: not ready within 0.1 s \(last answer: "
                                          r"ConnectionRefusedError: connection refused\)"):
        wait_ready("toy", refused, timeout=0.1)


def test_an_unexpected_error_while_waiting_is_raised_at_once() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_ready("toy", broken, timeout=60)


class Sleeper(Launcher):
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sleeper:
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)


def test_a_launcher_stops_its_process_by_pid_when_the_block_ends() -> None:
    with pytest.raises(RuntimeError), Sleeper() as server:
        assert server.proc is not None and alive(server.proc.pid)
        raise RuntimeError("the test failed")
    assert server.proc is not None and server.proc.poll() is not None

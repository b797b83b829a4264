"""A command's output is never interleaved with a library's INFO lines: libraries (paramiko's
"Connected", botocore) log at WARNING unless -v; the controller's own logs follow
FAILOVER_LOG_LEVEL (default WARNING). Run in a fresh process, as failoverctl runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import logging, sys
from controller.cli import main
main(sys.argv[1:] + ["schema"], standalone_mode=False)
for name in ("paramiko.transport", "botocore", "controller.loop"):
    print(name, logging.getLogger(name).getEffectiveLevel())
"""


def levels(*args: str, **env: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}).stdout
    return {name: int(level) for name, level in
            (line.split() for line in out.splitlines() if line.startswith(
                ("paramiko", "botocore", "controller.")))}


@pytest.mark.parametrize(("args", "env", "library", "own"), [
    ((), {}, 30, 30),                              # quiet by default
    ((), {"FAILOVER_LOG_LEVEL": "INFO"}, 30, 20),  # the operator's pod log: still no paramiko
    (("-v",), {}, 20, 10),                         # -v: everything
])
def test_library_logs_stay_at_warning_unless_verbose(
        args: tuple[str, ...], env: dict[str, str], library: int, own: int) -> None:
    got = levels(*args, **env)
    assert got["paramiko.transport"] == got["botocore"] == library
    assert got["controller.loop"] == own

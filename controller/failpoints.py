"""Failpoints: kill the process with SIGKILL at a named point, for crash-recovery tests.

Set `FAILOVER_FAILPOINT=<step>:<point>` (points: before, prepared, performed, recorded)
and the controller kills itself there, exactly like `kill -9` from outside, but at a
deterministic place. Unset (always, in production), `hit` is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = ("before", "prepared", "performed", "recorded")
_ARMED = os.environ.get("FAILOVER_FAILPOINT", "")


def hit(step: str, point: str) -> None:
    if _ARMED and f"{step}:{point}" == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)

"""Loopback ports picked at run time, for whatever starts a throw-away local server.

Owns `free_port`, used both by a provider (the backup verifier's test restore starts a
PostgreSQL on loopback) and by the launchers of `controller.drill.servers`; it lives at
the bottom so a provider never imports upward into `controller.drill`.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

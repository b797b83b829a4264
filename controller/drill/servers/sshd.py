"""OpenSSH server launcher: a real sshd on loopback for remote-restore tests and drills.

Owns one `sshd -D -e` process started by absolute path (/usr/sbin/sshd) from a fresh
directory: its own ed25519 host key, a client key pair whose public half is the only
authorized key, `StrictModes no` (the keys sit under /tmp), `UsePAM no`, no passwords.
It exposes `known_hosts` (the line that pins the host key for `[127.0.0.1]:PORT`) so
callers never accept an unknown key, and it is stopped by its own PID.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path

from controller.drill.processes import terminate
from controller.drill.servers.base import Launcher, ServerError, free_port, wait_ready

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"


def _keygen(path: Path) -> None:
    proc = subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f",
                           str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServerError(f"ssh-keygen failed: {proc.stderr.strip()} "
                          "(apt-get install -y --no-install-recommends openssh-client)")


class SshServer(Launcher):
    """sshd on 127.0.0.1:port accepting exactly `client_key` for the current user."""

    def __init__(self, base: Path, *, port: int | None = None):
        self.base = Path(base)
        self.port = port or free_port()
        self.host_key = self.base / "host_ed25519"
        self.client_key = self.base / "client_ed25519"
        self.config = self.base / "sshd_config"
        self.log = self.base / "sshd.log"
        self.user = getpass.getuser()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts(self) -> str:
        """The known_hosts line pinning this server's host key."""
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def start(self, *, timeout: float = 10.0) -> SshServer:
        if not SSHD.exists():
            raise ServerError(f"{SSHD} not found: apt-get install -y --no-install-recommends "
                              "openssh-server")
        self.base.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                _keygen(key)
        auth = self.base / "authorized_keys"
        auth.write_text(self.client_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"PidFile {self.base / 'sshd.pid'}", f"AuthorizedKeysFile {auth}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", f"AllowUsers {self.user}",
            "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
        ]))
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("wb"))
        try:
            wait_ready(f"sshd on port {self.port}", self._answers, timeout=timeout,
                       watch=[("sshd", self.proc, self.log)])
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        terminate(proc)

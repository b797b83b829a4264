"""Where restore commands run: this machine (subprocess) and a database host over a real
sshd (paramiko, host key pinned) through the same tests. A restore's whole payload goes
through `Host.run(stdin=...)`: every byte must arrive, in order, whatever the chunks look
like, and a command that stops reading must end the stream with its own exit status."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.backups.hosts import PACKET_DATA, Chunk, Host, LocalHost, SshHost, SshOptions
from controller.drill.servers.sshd import SshServer
from controller.secrets import Secrets


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    if request.param == "local":
        yield LocalHost()
        return
    sshd: SshServer = request.getfixturevalue("sshd")
    key, known = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text(sshd.client_key.read_text())
    key.chmod(0o600)
    known.write_text(sshd.known_hosts)
    remote = SshHost("127.0.0.1", SshOptions.model_validate({
        "user": sshd.user, "port": sshd.port, "privateKey": {"fromFile": str(key)},
        "knownHosts": {"fromFile": str(known)}}), secrets=Secrets())
    try:
        yield remote
    finally:
        remote.close()


def test_a_stream_arrives_byte_for_byte_whatever_its_chunks(host: Host) -> None:
    big = os.urandom(3 << 20)
    view = memoryview(big)
    # bytes and slices of a larger buffer; empty, one byte, a packet's worth and one more,
    # a chunk that is not a whole number of packets, several MiB at once
    chunks: list[Chunk] = [b"", b"x", big[:PACKET_DATA], view[5:PACKET_DATA + 6],
                           view[:(1 << 20) + 3], b"", big, view[7:11]]
    result = host.run(["sh", "-c", "sha256sum; echo done >&2"], stdin=iter(chunks))
    sent = hashlib.sha256(b"".join(bytes(c) for c in chunks)).hexdigest()
    assert (result.rc, result.out.split()[0], result.err) == (0, sent, "done\n")


def test_a_command_that_stops_reading_ends_the_stream_with_its_exit_status(
        host: Host) -> None:
    block = os.urandom(1 << 20)
    taken = itertools.count()

    def gigabyte() -> Iterator[Chunk]:  # far more than the command reads
        for _ in range(1024):
            next(taken)
            yield block

    result = host.run(["sh", "-c", "head -c 1000 >/dev/null; echo 'gave up' >&2; exit 3"],
                      stdin=gigabyte(), check=False)
    assert (result.rc, result.err) == (3, "gave up\n")
    assert next(taken) < 1024, "the whole stream was pushed at a command that had exited"

"""Readiness of a remote restore target, over a real sshd: the host answers with its
pinned host key and has the PostgreSQL binaries; a host key that does not match the pin
fails the check, naming why (the restore itself would refuse the host the same way)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from controller import readiness
from controller.backends import Backends
from controller.drill.servers.sshd import SshServer, _keygen
from controller.plan import parse_plan
from tests.e2e.test_cli import EXAMPLE


def plan_for(sshd: SshServer, tmp: Path, known_hosts: str) -> Any:
    (tmp / "key").write_text(sshd.client_key.read_text())
    (tmp / "known").write_text(known_hosts)
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["spec"]["backends"] += [
        {"name": "vault", "role": "store", "kind": "memory", "options": {"backups": [
            {"id": "b1", "dataset": "orders", "takenAt": time.time(), "verified": True}]}},
        {"name": "dbhost", "role": "restorer", "kind": "basebackup", "options": {
            "store": {"kind": "filesystem", "options": {"path": str(tmp / "catalog")}},
            "ssh": {"user": sshd.user, "privateKey": {"fromFile": str(tmp / "key")},
                    "knownHosts": {"fromFile": str(tmp / "known")}}}},
    ]
    data["spec"]["steps"].append({
        "name": "restore-db", "action": "restore", "backend": "dbhost",
        "params": {"store": "vault", "dataset": "orders", "into": {
            "host": "127.0.0.1", "path": str(tmp / "data"),
            "options": {"sshPort": sshd.port}}}})
    return parse_plan(data)


def host_check(plan: Any) -> dict[str, Any]:
    result = readiness.summary(readiness.checks(plan, Backends(plan)))
    return next(c for c in result["checks"] if c["name"] == "step restore-db: restore host")


def test_restore_host_is_ready_over_ssh_with_the_pinned_key(sshd: SshServer,
                                                            tmp_path: Path) -> None:
    check = host_check(plan_for(sshd, tmp_path, sshd.known_hosts))
    assert check["ok"], check["detail"]
    assert "pinned host key works" in check["detail"]


def test_a_host_key_that_does_not_match_the_pin_fails_readiness(sshd: SshServer,
                                                                 tmp_path: Path) -> None:
    other = SshServer(tmp_path / "other")  # another host key, never started
    other.port = sshd.port
    other.base.mkdir()
    _keygen(other.host_key)
    check = host_check(plan_for(sshd, tmp_path, other.known_hosts))
    assert not check["ok"] and "does NOT match" in check["detail"], check["detail"]

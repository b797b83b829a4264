"""`failoverctl ready` against a real DNS server: a wrong TSIG key fails the readiness check.

The plan's DNS backend is RFC 2136 against a real BIND 9 (a primary and one secondary,
controller.drill.servers.bind, stopped by PID); the rest stays in-memory. The DNS
provider's `ready()` sends a signed no-op update, so only a key BIND accepts passes.
(The other readiness failure the emergency plans ask for — the newest verified backup
older than the RPO budget — is test_manual.py::test_readiness_fails_on_a_backup_older_than
_the_rpo.)
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.drill.servers.bind import BindServers
from tests.e2e.test_cli import EXAMPLE, cli

ZONE = "example.test."


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServers]:
    with BindServers(zone=ZONE, secondaries=1, records=["www 60 IN A 192.0.2.10"]) as servers:
        yield servers


def plan_with_bind(tmp_path: Path, bind: BindServers, secret_file: Path) -> Path:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    zone = next(b for b in data["spec"]["backends"] if b["name"] == "zone")
    zone["kind"] = "rfc2136"
    zone["options"] = {
        "zone": ZONE, "server": bind.primary.address, "port": bind.primary.port,
        "tsig": {"name": bind.key_name, "secret": {"fromFile": str(secret_file)}},
        "nameservers": [{"address": s.address, "port": s.port, "name": s.name}
                        for s in bind.servers],
        "timeout": "2s", "verifyTimeout": "10s"}
    path = tmp_path / f"plan-{secret_file.stem}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_readiness_fails_when_the_dns_key_is_wrong(bind: BindServers, tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    good = cli("ready", str(plan_with_bind(tmp_path, bind, bind.key_file)), "-o", "json",
               journal=journal)
    assert good.returncode == 0, good.stdout + good.stderr
    checks = {c["name"]: c for c in json.loads(good.stdout)["checks"]}
    assert checks["backend zone"]["ok"] and "accepted by the primary" in checks[
        "backend zone"]["detail"]
    assert checks["step dns-cutover: dns readable"]["ok"]

    secret = base64.b64encode(os.urandom(32)).decode()
    wrong = tmp_path / "wrong.key"
    wrong.write_text(secret)
    plan = plan_with_bind(tmp_path, bind, wrong)
    res = cli("ready", str(plan), "-o", "json", journal=journal)
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads(res.stdout)
    failed = {c["name"]: c["detail"] for c in out["failed"]}
    assert "backend zone" in failed, out
    assert f"rejected TSIG key {bind.key_name!r}" in failed["backend zone"]
    assert "BADSIG" in failed["backend zone"]
    assert out["score"] < 100
    assert secret not in res.stdout + res.stderr and bind.secret not in res.stdout

    text = cli("ready", str(plan), journal=journal)
    assert text.returncode == 1 and "[FAIL] backend zone: " in text.stdout
    status = json.loads(cli("status", "-o", "json", journal=journal).stdout)
    assert "backend zone" in {c["name"] for c in status[0]["readiness"]["failed"]}

"""TTL pre-lowering (`failoverctl dns-prepare`, readiness `dns ttl`) against real BIND.

A plan's DNS step names its wanted pre-failover TTL (`prepareTtl`); readiness fails while
the live record's TTL is above it; `dns-prepare --dry-run` changes nothing; `dns-prepare`
lowers the TTL (values untouched) by compare-and-swap on the primary, verified on all
three authoritative servers and audited in the journal; a second run changes nothing; a
TTL is never raised; a change made by someone else meanwhile is not overwritten.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml
from click.testing import CliRunner

from controller import registry
from controller.cli import main
from controller.dns import ttl as ttls
from controller.drill.servers.bind import BindServers
from controller.journal import Journal
from controller.model import PermanentError, Record
from controller.plan import load_plan
from controller.secrets import Secrets
from tests.contract.dns.conftest import bind_writer, rfc2136_options
from tests.contract.dns.test_rfc2136_bind import fresh

LOGIN = pwd.getpwuid(os.getuid()).pw_name  # who dns-prepare on a plan file acts as


def ttl_on(bind: BindServers, server: str, name: str) -> tuple[int, list[str]]:
    s = bind.server(server)
    answer = dns.query.udp(dns.message.make_query(name, "A"), s.address, port=s.port,
                           timeout=2)
    [rrset] = answer.answer
    return int(rrset.ttl), sorted(r.to_text() for r in rrset)


def write_plan(path: Path, bind: BindServers, name: str, prepare_ttl: int | None) -> Path:
    params: dict[str, Any] = {"records": [{"name": name, "type": "A", "ttl": 60,
                                           "values": ["198.51.100.7"]}]}
    if prepare_ttl is not None:
        params["prepareTtl"] = prepare_ttl
    plan = {
        "apiVersion": "failover.example.io/v1alpha1", "kind": "FailoverPlan",
        "metadata": {"name": "ttl-plan"},
        "spec": {
            "sites": {"primary": {"name": "dc-a"}, "backup": {"name": "dc-b"}},
            "services": [{"name": "web", "core": True, "probes": [
                {"kind": "tcp", "options": {"host": "127.0.0.1", "port": 9}}]}],
            "backends": [{"name": "zone", "role": "dns", "kind": "rfc2136",
                          "options": rfc2136_options(bind)}],
            "steps": [{"name": "dns-cutover", "action": "dns", "backend": "zone",
                       "params": params}],
        },
    }
    path.write_text(yaml.safe_dump(plan))
    return path


def cli(journal: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--journal", str(journal), *args])


def test_dns_prepare_lowers_the_ttl_everywhere_idempotently_and_audited(
        bind: BindServers, tmp_path: Path) -> None:
    name = fresh("ttl")
    bind_writer(bind)(Record(name, "A", 3600, ("192.0.2.1",)))
    plan, journal = write_plan(tmp_path / "plan.yaml", bind, name, 60), tmp_path / "j.db"

    before = cli(journal, "ready", str(plan), "-o", "json")
    assert before.exit_code == 1, before.output
    [check] = [c for c in json.loads(before.output)["checks"]
               if c["name"] == "step dns-cutover: dns ttl"]
    assert not check["ok"] and f"{name} A ttl 3600 > 60" in check["detail"]
    assert "failoverctl dns-prepare" in check["detail"]

    dry = cli(journal, "dns-prepare", str(plan), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"{name} A: ttl 3600 -> 60 (dry run)" in dry.output
    assert ttl_on(bind, "ns1", name) == (3600, ["192.0.2.1"])

    done = cli(journal, "dns-prepare", str(plan), "-o", "json")
    assert done.exit_code == 0, done.output
    [result] = json.loads(done.output)
    assert result["action"] == "lowered" and result["servers"] == 3
    assert result["effectiveEverywhereBy"].endswith("Z")
    for server in ("ns1", "ns2", "ns3"):  # verified everywhere; the values untouched
        assert ttl_on(bind, server, name) == (60, ["192.0.2.1"])

    again = cli(journal, "dns-prepare", str(plan))
    assert again.exit_code == 0 and "ttl 60 already <= 60" in again.output
    after = json.loads(cli(journal, "ready", str(plan), "-o", "json").output)
    [check] = [c for c in after["checks"] if c["name"] == "step dns-cutover: dns ttl"]
    assert check["ok"] and f"{name} A ttl 60 <= 60" in check["detail"]

    j = Journal(journal)
    try:
        trail = [(a["actor"], a["action"], a["detail"]) for a in j.audit_trail(plan="ttl-plan")]
    finally:
        j.close()
    lowered = [t for t in trail if t[1] == "dns-ttl-lowered"]
    assert lowered == [(LOGIN, "dns-ttl-lowered", f"step dns-cutover: {name} A ttl "
                        "3600 -> 60 (values ['192.0.2.1'] unchanged)")]
    assert [t[2] for t in trail if t[1] == "dns-prepare"] == ["dry run", "start", "start"]
    assert bind.secret not in json.dumps(trail)


def test_a_ttl_is_never_raised_and_ttl_flag_overrides(bind: BindServers,
                                                      tmp_path: Path) -> None:
    name = fresh("ttl-low")
    bind_writer(bind)(Record(name, "A", 30, ("192.0.2.1",)))
    plan, journal = write_plan(tmp_path / "plan.yaml", bind, name, None), tmp_path / "j.db"
    missing = cli(journal, "dns-prepare", str(plan))
    assert missing.exit_code == 2 and "pass --ttl" in missing.output
    higher = cli(journal, "dns-prepare", str(plan), "--ttl", "300")
    assert higher.exit_code == 0 and "ttl 30 already <= 300" in higher.output
    lower = cli(journal, "dns-prepare", str(plan), "--ttl", "10")
    assert lower.exit_code == 0 and "ttl 30 -> 10" in lower.output
    assert ttl_on(bind, "ns3", name) == (10, ["192.0.2.1"])


def test_a_concurrent_change_is_not_overwritten(bind: BindServers, tmp_path: Path) -> None:
    name = fresh("ttl-race")
    seed = bind_writer(bind)
    seed(Record(name, "A", 3600, ("192.0.2.1",)))
    plan = load_plan(write_plan(tmp_path / "plan.yaml", bind, name, 60))
    provider = registry.build("dns", "rfc2136", rfc2136_options(bind), secrets=Secrets())

    class Racing:
        """Someone changes the record right after our read."""

        def records(self, **kw: Any) -> list[Record]:
            found = provider.records(**kw)
            seed(Record(name, "A", 3600, ("203.0.113.9",)))
            return list(found)

        def apply(self, **kw: Any) -> Any:
            return provider.apply(**kw)

    with pytest.raises(PermanentError, match=r"changed while its TTL was being lowered; "
                                             r"nothing overwritten: .*203\.0\.113\.9"):
        ttls.prepare(plan, lambda _: Racing())
    assert ttl_on(bind, "ns1", name) == (3600, ["203.0.113.9"])

"""RFC 2136 provider against real BIND: a primary and two secondaries (NOTIFY + TSIG AXFR/IXFR).

Proves what only real servers can: the cutover is verified on every authoritative server
with per-server evidence (serial, answer, attempts); a lagging secondary is waited for; a
secondary that stops serving makes verification time out naming it; a wrong TSIG secret
or key name is reported by key name (never the secret); the engine's DNS step fails with
a clear reason when the record changed between its read and its write. An update that
lands on the primary but is not served by a stopped secondary within `verifyTimeout`
fails the step, and the step's revert (from the `before` saved by prepare) puts every
server back once the secondary is resumed; a deletion is verified on every server too.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.flags
import dns.message
import dns.query
import pytest

from controller import registry
from controller.dns.rfc2136 import DnsVerificationTimeout
from controller.drill.servers.bind import BindServers
from controller.model import PermanentError, Record
from controller.plan import Step
from controller.secrets import Secrets
from controller.steps import StepContext
from controller.steps.dns import Dns
from tests.contract.dns.conftest import ZONE, rfc2136_options

_N = iter(range(10_000))


options = rfc2136_options  # the provider's options for the session's BIND servers


def provider(bind: BindServers, **extra: Any) -> Any:
    return registry.build("dns", "rfc2136", options(bind, **extra), secrets=Secrets())


def fresh(label: str) -> str:
    return f"{label}-{next(_N)}.{ZONE}"


def served(bind: BindServers, server: str, name: str) -> list[str]:
    """Ask one server directly (not through the provider) what it answers."""
    s = bind.server(server)
    answer = dns.query.udp(dns.message.make_query(name, "A"), s.address, port=s.port,
                           timeout=2)
    return sorted(r.to_text() for rrset in answer.answer for r in rrset)


def test_cutover_is_verified_on_every_server_with_evidence(bind: BindServers) -> None:
    p, name = provider(bind), fresh("www")
    p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.10",))])
    before = p.records(names=[name])
    evidence = p.apply(expected=before, desired=[Record(name, "A", 60, ("198.51.100.10",))])
    assert [s["name"] for s in evidence["servers"]] == ["ns1", "ns2", "ns3"]
    for s in evidence["servers"]:
        assert s["serial"] >= evidence["serial"]
        assert s["answer"] == {f"{name} A": ["198.51.100.10"]}
        assert s["attempts"] >= 1 and s["secondsAfterWrite"] >= 0
    assert evidence["key"] == bind.key_name and evidence["oldTtl"] == 300
    assert "clients may still use the old values until" in evidence["note"]
    for server in ("ns1", "ns2", "ns3"):  # independently of the provider's own check
        assert served(bind, server, name) == ["198.51.100.10"]


def test_an_answer_too_big_for_udp_is_verified_over_tcp(bind: BindServers) -> None:
    """60 addresses do not fit a 512-byte UDP reply: servers answer truncated and the
    verification must ask again over TCP rather than compare a partial set."""
    p, name = provider(bind), fresh("pool")
    many = tuple(f"198.51.100.{i}" for i in range(1, 61))
    evidence = p.apply(expected=[], desired=[Record(name, "A", 300, many)])
    assert [len(s["answer"][f"{name} A"]) for s in evidence["servers"]] == [60, 60, 60]
    big = dns.query.udp(dns.message.make_query(name, "A"), bind.primary.address,
                        port=bind.primary.port, timeout=2)
    assert big.flags & dns.flags.TC  # the premise: plain UDP cannot carry it


def test_servers_come_from_the_zone_ns_set_when_not_listed(bind: BindServers) -> None:
    p = registry.build("dns", "rfc2136", {**options(bind), "nameservers": []},
                       secrets=Secrets())
    found = p.nameservers()
    # every NS name of the zone has glue 127.0.0.1; at `port` they are all the primary
    assert [(s.address, s.port) for s in found] == [("127.0.0.1", bind.primary.port)]
    assert found[0].name == "ns1.example.test./ns2.example.test./ns3.example.test."
    name = fresh("ns-set")
    evidence = p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.1",))])
    assert evidence["servers"][0]["name"] == found[0].name


def test_a_lagging_secondary_is_waited_for(bind: BindServers) -> None:
    p, name = provider(bind), fresh("lag")
    bind.pause("ns3")
    timer = threading.Timer(0.3, bind.resume, args=("ns3",))
    timer.start()
    try:
        evidence = p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.7",))])
    finally:
        timer.join()
        bind.resume("ns3")
    by_name = {s["name"]: s for s in evidence["servers"]}
    assert by_name["ns3"]["attempts"] > 1
    assert by_name["ns3"]["answer"] == {f"{name} A": ["192.0.2.7"]}


def test_a_secondary_that_stops_serving_times_out_naming_it(bind: BindServers) -> None:
    p, name = provider(bind, verifyTimeout="1s", timeout="200ms"), fresh("down")
    bind.pause("ns2")
    try:
        with pytest.raises(DnsVerificationTimeout) as caught:
            p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.8",))])
    finally:
        bind.resume("ns2")
    message = str(caught.value)
    assert "not served within 1 s by: ns2 (no answer (timeout))" in message
    assert "ns3" not in message and "ns1" not in message
    assert served(bind, "ns1", name) == ["192.0.2.8"]  # the write itself went through


def test_a_listed_server_that_is_down_is_named(bind: BindServers) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    extra = [{"address": "127.0.0.1", "port": dead, "name": "ns9-decommissioned"}]
    p = provider(bind, verifyTimeout="500ms", timeout="100ms",
                 nameservers=options(bind)["nameservers"] + extra)
    with pytest.raises(DnsVerificationTimeout, match=r"ns9-decommissioned \(no answer"):
        p.apply(expected=[], desired=[Record(fresh("dead"), "A", 300, ("192.0.2.9",))])


@pytest.mark.parametrize("key_name, error", [("failover-key", "BADSIG"),
                                             ("no-such-key", "BADKEY")])
def test_a_wrong_tsig_key_is_named_never_its_secret(bind: BindServers, tmp_path: Path,
                                                    key_name: str, error: str) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()
    (tmp_path / "wrong.key").write_text(secret)
    p = provider(bind, tsig={"name": key_name, "secret": {"fromFile": str(tmp_path /
                                                                          "wrong.key")}})
    name = fresh("badkey")
    with pytest.raises(PermanentError) as caught:
        p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.66",))])
    message = str(caught.value)
    assert f"rejected TSIG key {key_name!r}" in message and error in message
    assert secret not in message and bind.secret not in message
    with pytest.raises(PermanentError, match=error):
        p.ready()
    assert served(bind, "ns1", name) == []


def test_ready_is_a_signed_no_op(bind: BindServers) -> None:
    p = provider(bind)
    serial = p.verify(desired=[])["serial"]
    assert "key 'failover-key' accepted" in p.ready()
    assert p.verify(desired=[])["serial"] == serial


def test_whole_zone_is_read_by_signed_transfer(bind: BindServers) -> None:
    names = {r.name for r in provider(bind).records()}
    assert {"example.test.", "ns1.example.test.", "ns3.example.test."} <= names


def test_engine_step_fails_clearly_when_dns_changed_between_read_and_write(
        bind: BindServers) -> None:
    """The DNS step (controller.steps.dns.Dns) over the real provider: prepare reads, someone
    changes the record, perform's compare-and-swap is rejected and nothing is overwritten."""
    p, name = provider(bind), fresh("step")
    p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.1",))])
    step = Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "dns",
                                "params": {"records": [{"name": name, "type": "A",
                                                        "ttl": 60,
                                                        "values": ["198.51.100.1"]}]}})
    ctx = StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                      backends=SimpleNamespace(dns=lambda _: p),  # type: ignore[arg-type]
                      lookup_evidence=lambda *_: {})
    prepared = Dns().prepare(step, ctx)
    p.apply(expected=p.records(names=[name]),
            desired=[Record(name, "A", 300, ("203.0.113.5",))])  # a concurrent operator
    with pytest.raises(PermanentError, match=r"DNS changed under us: .* is "
                                             r"\['203\.0\.113\.5'\], expected \['192\.0\.2\.1'\]"):
        Dns().apply(step, ctx, prepared)
    assert served(bind, "ns1", name) == ["203.0.113.5"]


def dns_step(name: str, value: str, ttl: int = 60) -> Step:
    return Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "dns",
                                "params": {"records": [{"name": name, "type": "A",
                                                        "ttl": ttl, "values": [value]}]}})


def context(p: Any) -> StepContext:
    return StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                       backends=SimpleNamespace(dns=lambda _: p),  # type: ignore[arg-type]
                       lookup_evidence=lambda *_: {})


def test_an_update_not_served_in_time_fails_and_its_revert_restores_every_server(
        bind: BindServers) -> None:
    """Issue 14 item 6: the update lands on the primary, a stopped secondary does not
    serve it within verifyTimeout, the step fails; its revert needs only what prepare
    saved, and restores the original on every server once the secondary is back."""
    p, name = provider(bind, verifyTimeout="1s", timeout="200ms"), fresh("landed")
    p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.40",))])
    step, ctx = dns_step(name, "198.51.100.40"), context(p)
    prepared = {"prepared": True, **Dns().prepare(step, ctx)}  # saved before any write
    bind.pause("ns2")
    try:
        with pytest.raises(DnsVerificationTimeout, match=r"not served within 1 s by: ns2"):
            Dns().apply(step, ctx, prepared)
        assert served(bind, "ns1", name) == ["198.51.100.40"]  # the update landed
    finally:
        bind.resume("ns2")
    result = Dns().revert(step, ctx, prepared)  # the failed step's evidence: prepare's
    assert result["reverted"] == [{"record": f"{name} A", "action": "restored",
                                   "stepWrote": ["198.51.100.40"], "original": ["192.0.2.40"]}]
    assert [(s["name"], s["answer"]) for s in result["restore"]["servers"]] == [
        (ns, {f"{name} A": ["192.0.2.40"]}) for ns in ("ns1", "ns2", "ns3")]
    for ns in ("ns1", "ns2", "ns3"):  # independently of the provider's own check
        assert served(bind, ns, name) == ["192.0.2.40"]


def test_a_created_record_is_deleted_everywhere_even_when_the_revert_is_run_again(
        bind: BindServers) -> None:
    """The step created the record and failed (ns3 stopped); the revert deletes it on the
    primary but cannot prove it while ns3 is stopped, so it fails; run again once ns3 is
    back, it finds the record gone and proves every server no longer serves it."""
    p, name = provider(bind, verifyTimeout="1s", timeout="200ms"), fresh("created")
    step, ctx = dns_step(name, "198.51.100.41"), context(p)
    prepared = {"prepared": True, **Dns().prepare(step, ctx)}
    assert prepared["before"] == []
    bind.pause("ns3")
    try:
        with pytest.raises(DnsVerificationTimeout, match="by: ns3"):
            Dns().apply(step, ctx, prepared)
        with pytest.raises(DnsVerificationTimeout, match="by: ns3"):
            Dns().revert(step, ctx, prepared)
        assert served(bind, "ns1", name) == []  # the delete itself went through
    finally:
        bind.resume("ns3")
    again = Dns().revert(step, ctx, prepared)
    assert again["reverted"] == [] and again["left"] == []
    assert again["unchanged"] == [{"record": f"{name} A", "now": [],
                                   "why": "already the original"}]
    assert [(s["name"], s["answer"]) for s in again["verify"]["servers"]] == [
        (ns, {f"{name} A": []}) for ns in ("ns1", "ns2", "ns3")]
    for ns in ("ns1", "ns2", "ns3"):
        assert served(bind, ns, name) == []


def test_a_name_outside_the_zone_is_refused_before_sending(bind: BindServers) -> None:
    with pytest.raises(PermanentError, match=r"outside zone example\.test\."):
        provider(bind).apply(expected=[], desired=[Record("www.other.test.", "A", 300,
                                                          ("192.0.2.1",))])


def test_rdtype_listing_skips_soa(bind: BindServers) -> None:
    types = {r.type for r in provider(bind).records(names=[ZONE])}
    assert "NS" in types and "SOA" not in types


def test_a_port_taken_between_check_and_start_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may take a port found free before named binds it (the sandbox
    failed to start that way once): the launcher starts every server on new ports."""
    import socket

    from controller.drill.servers import bind as launcher

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    taken = busy.getsockname()[1]
    real = launcher.free_dns_port
    handed: list[int] = []

    def racing(used: set[int], **kw: Any) -> int:
        port = taken if not handed else real(used, **kw)
        handed.append(port)
        return port

    monkeypatch.setattr(launcher, "free_dns_port", racing)
    try:
        with BindServers(zone=ZONE, secondaries=1) as servers:
            assert taken not in [s.port for s in servers.servers]
            assert provider(servers).ready().startswith("key")
    finally:
        busy.close()
    assert handed[0] == taken and len(handed) == 4  # 2 ports, then 2 new ones


def test_failback_reverts_a_dns_step_that_failed_after_writing(bind: BindServers,
                                                                tmp_path: Path) -> None:
    """Issue 14 item 6 through the engine: the DNS update lands on the primary but a
    stopped secondary does not serve it in time, the step fails (onFailure: abort) and the
    run is Failed with traffic on dc-b; the failback reverts both steps — the failed DNS
    step too — and every server serves the original again, as the status says."""
    import yaml

    from controller import testing
    from controller.journal import Journal
    from controller.loop import Engine
    from controller.model import Phase
    from controller.plan import parse_plan

    name = fresh("failback")
    provider(bind).apply(expected=[], desired=[Record(name, "A", 60, ("192.0.2.50",))])
    data = yaml.safe_load((Path(__file__).resolve().parents[3]
                           / "manifests/examples/memory-drill.yaml").read_text())
    spec = data["spec"]
    spec["backends"][1] = {"name": "zone", "role": "dns", "kind": "rfc2136",
                           "options": options(bind, verifyTimeout="1s", timeout="500ms")}
    spec["steps"] = [s for s in spec["steps"] if s["name"] in ("redirect-traffic",
                                                              "dns-cutover")]
    spec["steps"][1].update(onFailure="abort", retries=0,
                            params={"records": [{"name": name, "type": "A", "ttl": 60,
                                                 "values": ["198.51.100.50"]}]})
    plan = parse_plan(data)
    journal = Journal(tmp_path / "journal.db")
    engine = Engine(plan, journal, holder="it")
    engine.request("failover", actor="oncall", reason="drill")
    bind.pause("ns2")
    try:
        assert engine.reconcile().phase is Phase.FAILED
        assert served(bind, "ns1", name) == ["198.51.100.50"]  # it landed, then failed
    finally:
        bind.resume("ns2")
    edge = testing.FakeTrafficBackend(testing.FakeTrafficOptions(key="edge"))
    assert edge.current() == {"dc-a": 0, "dc-b": 100}
    engine.request("failback", actor="oncall", reason="back")
    cycle = engine.reconcile()
    back = journal.runs(plan.name, limit=1)[0]
    assert back.kind == "failback" and back.phase is Phase.HEALTHY, back.outcome
    assert [s.name for s in journal.steps(back.id)] == ["revert-dns-cutover",
                                                       "revert-redirect-traffic"]
    assert cycle.state.active_site == "dc-a"
    assert edge.current() == {"dc-a": 100, "dc-b": 0}
    for ns in ("ns1", "ns2", "ns3"):
        assert served(bind, ns, name) == ["192.0.2.50"]
    journal.close()

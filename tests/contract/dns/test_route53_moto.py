"""Route 53 provider against moto's server: weighted and failover record sets by SetIdentifier.

The provider manages only its own set (one backend per SetIdentifier), keeps the set's
routing attributes (Weight, Failover) when swapping its values, never touches the sibling
sets, and creates a missing set with the weight or failover role from its options. A DNS
step resumed after its write landed proves INSYNC by a no-op UPSERT of the identical sets
(and fails when that change never goes INSYNC: moto always answers INSYNC, so those tests
rewrite the status botocore parses from moto's real answer to PENDING). (The
PENDING->INSYNC wait and AWS's rejections, which moto does not model, are covered with
botocore's Stubber in tests/unit/test_dns_route53.py.)
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest

from controller import registry
from controller.dns import DnsNotServed
from controller.dns.route53 import DnsSyncTimeout
from controller.drill.servers.moto import MotoServer
from controller.model import PermanentError, Record
from controller.plan import Step
from controller.secrets import Secrets
from controller.steps import StepContext
from controller.steps.dns import Dns

_N = itertools.count()


def build(moto: MotoServer, zone: str, **extra: Any) -> Any:
    return registry.build("dns", "route53", {"hostedZoneId": zone, "endpointUrl": moto.endpoint,
                                             "pollInterval": "10ms", **extra},
                          secrets=Secrets(), client=moto.client("route53"))


def raw_sets(moto: MotoServer, zone: str, name: str) -> list[dict[str, Any]]:
    sets = moto.client("route53").list_resource_record_sets(
        HostedZoneId=zone, StartRecordName=name)["ResourceRecordSets"]
    return [s for s in sets if s["Name"] == name]


def weighted(moto: MotoServer, zone: str, name: str) -> None:
    moto.client("route53").change_resource_record_sets(HostedZoneId=zone, ChangeBatch={
        "Changes": [{"Action": "CREATE", "ResourceRecordSet": {
            "Name": name, "Type": "A", "TTL": 60, "SetIdentifier": site, "Weight": weight,
            "ResourceRecords": [{"Value": value}]}}
            for site, weight, value in (("dc-a", 100, "192.0.2.1"), ("dc-b", 0, "198.51.100.1"))]})


def test_weighted_set_is_swapped_by_set_identifier(moto: MotoServer, hosted_zone: str) -> None:
    name = f"weighted-{next(_N)}.example.test."
    weighted(moto, hosted_zone, name)
    p = build(moto, hosted_zone, setIdentifier="dc-b")
    before = p.records(names=[name])
    assert before == [Record(name, "A", 60, ("198.51.100.1",))]
    evidence = p.apply(expected=before, desired=[Record(name, "A", 30, ("198.51.100.2",))])
    assert evidence["setIdentifier"] == "dc-b" and evidence["status"] == "INSYNC"
    sets = {s["SetIdentifier"]: s for s in raw_sets(moto, hosted_zone, name)}
    assert sets["dc-b"]["Weight"] == 0 and sets["dc-b"]["TTL"] == 30
    assert sets["dc-b"]["ResourceRecords"] == [{"Value": "198.51.100.2"}]
    assert sets["dc-a"]["ResourceRecords"] == [{"Value": "192.0.2.1"}]  # sibling untouched
    assert build(moto, hosted_zone).records(names=[name]) == []  # no plain set there


def test_a_missing_failover_set_is_created_with_its_role(moto: MotoServer,
                                                         hosted_zone: str) -> None:
    name = f"failover-{next(_N)}.example.test."
    p = build(moto, hosted_zone, setIdentifier="dc-b", failover="SECONDARY")
    p.apply(expected=[], desired=[Record(name, "A", 60, ("198.51.100.3",))])
    [created] = raw_sets(moto, hosted_zone, name)
    assert created["SetIdentifier"] == "dc-b" and created["Failover"] == "SECONDARY"


def test_creating_a_set_without_a_routing_role_is_refused(moto: MotoServer,
                                                          hosted_zone: str) -> None:
    name = f"norole-{next(_N)}.example.test."
    p = build(moto, hosted_zone, setIdentifier="dc-c")
    with pytest.raises(PermanentError, match="set `weight` or `failover`"):
        p.apply(expected=[], desired=[Record(name, "A", 60, ("198.51.100.4",))])
    assert raw_sets(moto, hosted_zone, name) == []


def test_ready_reads_the_zone(moto: MotoServer, hosted_zone: str) -> None:
    assert "hosted zone example.test." in build(moto, hosted_zone).ready()


def test_an_unknown_hosted_zone_is_a_clear_error(moto: MotoServer) -> None:
    with pytest.raises(PermanentError, match="check hostedZoneId"):
        build(moto, "ZNOSUCHZONE").records(names=["www.example.test."])


# --- a resumed DNS step proves INSYNC ------------------------------------------------------


def dns_step(name: str, value: str, ttl: int = 60) -> Step:
    return Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "zone",
                                "params": {"records": [{"name": name, "type": "A",
                                                        "ttl": ttl, "values": [value]}]}})


def context(p: Any) -> StepContext:
    return StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                       backends=SimpleNamespace(dns=lambda _: p),  # type: ignore[arg-type]
                       lookup_evidence=lambda *_: {})


def submitted(p: Any) -> list[dict[str, Any]]:
    """Every change batch the provider's client sends from now on (botocore's event hook)."""
    sent: list[dict[str, Any]] = []
    p.client.meta.events.register(
        "before-call.route53.ChangeResourceRecordSets",
        lambda params, **_: sent.append(params["body"]))
    return sent


def never_insync(p: Any) -> None:
    """Route 53 accepts the change but never propagates it: the status botocore parsed
    from moto's answer is rewritten to PENDING for every change and every poll."""
    def pending(parsed: dict[str, Any], **_: Any) -> None:
        if "ChangeInfo" in parsed:
            parsed["ChangeInfo"]["Status"] = "PENDING"

    for operation in ("ChangeResourceRecordSets", "GetChange"):
        p.client.meta.events.register(f"after-call.route53.{operation}", pending)


def test_a_resumed_step_whose_write_landed_proves_insync(moto: MotoServer,
                                                         hosted_zone: str) -> None:
    name = f"resumed-{next(_N)}.example.test."
    p = build(moto, hosted_zone)
    step = dns_step(name, "198.51.100.20")
    prepared = Dns().prepare(step, context(p))  # the first attempt read: nothing there
    p.apply(expected=[], desired=[Record(name, "A", 60, ("198.51.100.20",))])  # then crashed
    sent = submitted(p)
    evidence = Dns().apply(step, context(p), prepared)  # the resumed attempt
    assert evidence["alreadyApplied"] is True
    assert evidence["status"] == "INSYNC" and evidence["changeId"]
    assert "went INSYNC" in evidence["proof"]
    assert len(sent) == 1 and b"<Action>UPSERT</Action>" in sent[0]
    assert b"<Value>198.51.100.20</Value>" in sent[0] and b"<TTL>60</TTL>" in sent[0]
    assert raw_sets(moto, hosted_zone, name) == [{
        "Name": name, "Type": "A", "TTL": 60,
        "ResourceRecords": [{"Value": "198.51.100.20"}]}]  # the proof changed no data


def test_a_resumed_step_fails_when_its_proof_never_goes_insync(moto: MotoServer,
                                                               hosted_zone: str) -> None:
    name = f"unproven-{next(_N)}.example.test."
    p = build(moto, hosted_zone, syncTimeout="300ms")
    step = dns_step(name, "198.51.100.21")
    prepared = Dns().prepare(step, context(p))
    p.apply(expected=[], desired=[Record(name, "A", 60, ("198.51.100.21",))])
    never_insync(p)
    with pytest.raises(DnsSyncTimeout, match=r"still not INSYNC after 0\.3 s") as caught:
        Dns().apply(step, context(p), prepared)
    assert isinstance(caught.value, DnsNotServed)
    assert not isinstance(caught.value, PermanentError)  # the executor may retry it


def test_verify_of_a_weighted_set_keeps_its_routing(moto: MotoServer,
                                                    hosted_zone: str) -> None:
    name = f"weighted-verify-{next(_N)}.example.test."
    weighted(moto, hosted_zone, name)
    p = build(moto, hosted_zone, setIdentifier="dc-b")
    sent = submitted(p)
    evidence = p.verify(desired=[Record(name, "A", 60, ("198.51.100.1",))])
    assert evidence["status"] == "INSYNC" and evidence["setIdentifier"] == "dc-b"
    assert b"<SetIdentifier>dc-b</SetIdentifier>" in sent[0] and b"<Weight>0</Weight>" in sent[0]
    sets = {s["SetIdentifier"]: s for s in raw_sets(moto, hosted_zone, name)}
    assert (sets["dc-a"]["Weight"], sets["dc-b"]["Weight"]) == (100, 0)
    assert sets["dc-b"]["ResourceRecords"] == [{"Value": "198.51.100.1"}]


def test_a_deletion_is_proven_by_a_no_op_on_the_zone_soa(moto: MotoServer,
                                                         hosted_zone: str) -> None:
    name = f"gone-{next(_N)}.example.test."
    p = build(moto, hosted_zone)
    sent = submitted(p)
    evidence = p.delete(expected=[Record(name, "A", 60, ("198.51.100.23",))])
    assert evidence["deleted"] == [] and evidence["status"] == "INSYNC"
    assert "the zone's SOA, unchanged" in evidence["proof"]
    assert len(sent) == 1 and b"<Type>SOA</Type>" in sent[0]
    assert b"<Action>UPSERT</Action>" in sent[0]

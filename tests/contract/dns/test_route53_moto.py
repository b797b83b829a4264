"""Route 53 provider against moto's server: weighted and failover record sets by SetIdentifier.

The provider manages only its own set (one backend per SetIdentifier), keeps the set's
routing attributes (Weight, Failover) when swapping its values, never touches the sibling
sets, and creates a missing set with the weight or failover role from its options. (The
PENDING->INSYNC wait and AWS's rejections, which moto does not model, are covered with
botocore's Stubber in tests/unit/test_dns_route53.py.)
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from controller import registry
from controller.drill.servers.moto import MotoServer
from controller.model import PermanentError, Record
from controller.secrets import Secrets

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

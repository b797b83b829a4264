"""Real DNS servers for the DNS provider contract tests, started once per session.

- `bind`: a BIND 9 primary (RFC 2136 + TSIG) and two secondaries fed by NOTIFY and
  TSIG-signed zone transfers (controller.drill.servers.bind), stopped by PID at the end;
- `moto`: moto's Route 53 server on a free port, with one hosted zone;
- `world`: one DNS world behind the `DnsProvider` contract, parametrized over the
  in-memory fake, BIND and moto, built through the registry like a plan would build it.
  `world.seed` changes a record out of band ("someone else" writing), and `world.name`
  gives each test its own owner name, so the session-wide servers are shared safely.

A missing `named` or moto makes the fixtures fail loudly (ServerError); nothing is skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dns.query
import dns.rcode
import dns.tsig
import dns.update
import pytest

from controller import registry
from controller.drill.servers.bind import BindServers
from controller.drill.servers.moto import MotoServer
from controller.model import Record
from controller.secrets import Secrets

ZONE = "example.test."
KINDS = ("memory", "rfc2136", "route53")
_COUNTER = itertools.count()


@pytest.fixture(scope="session")
def bind() -> Iterator[BindServers]:
    with BindServers(zone=ZONE, secondaries=2) as servers:
        yield servers


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def hosted_zone(moto: MotoServer) -> str:
    client = moto.client("route53")
    zone = client.create_hosted_zone(Name=ZONE, CallerReference="dns-contract")
    return str(zone["HostedZone"]["Id"]).removeprefix("/hostedzone/")


def rfc2136_options(bind: BindServers, **extra: Any) -> dict[str, Any]:
    return {
        "zone": ZONE, "server": bind.primary.address, "port": bind.primary.port,
        "tsig": {"name": bind.key_name, "secret": {"fromFile": str(bind.key_file)}},
        "nameservers": [{"address": s.address, "port": s.port, "name": s.name}
                        for s in bind.servers],
        "timeout": "2s", "verifyTimeout": "20s", **extra,
    }


def bind_writer(bind: BindServers) -> Callable[[Record], None]:
    """An out-of-band RFC 2136 writer (another operator), signed with the same key."""
    key = dns.tsig.Key(bind.key_name, bind.secret, bind.algorithm)

    def write(rec: Record) -> None:
        update = dns.update.UpdateMessage(ZONE, keyring=key)
        update.delete(rec.name, rec.type)
        for value in rec.values:
            update.add(rec.name, rec.ttl, rec.type, value)
        response = dns.query.tcp(update, bind.primary.address, port=bind.primary.port,
                                 timeout=5)
        assert response.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(response.rcode())

    return write


@dataclass
class World:
    kind: str
    provider: Any
    seed: Callable[[Record], None]

    def name(self, label: str) -> str:
        return f"{label}-{next(_COUNTER)}.{ZONE}"


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest) -> World:
    kind: str = request.param
    secrets = Secrets()
    if kind == "memory":
        options: dict[str, Any] = {"key": f"contract-{next(_COUNTER)}"}
        provider = registry.build("dns", kind, options, secrets=secrets)
        other = registry.build("dns", kind, options, secrets=secrets)

        def seed(rec: Record) -> None:
            current = other.records(names=[rec.name])
            other.apply(expected=current, desired=[rec])

        return World(kind, provider, seed)
    if kind == "rfc2136":
        bind: BindServers = request.getfixturevalue("bind")
        provider = registry.build("dns", kind, rfc2136_options(bind), secrets=secrets)
        return World(kind, provider, bind_writer(bind))
    moto: MotoServer = request.getfixturevalue("moto")
    zone: str = request.getfixturevalue("hosted_zone")
    options = {"hostedZoneId": zone, "endpointUrl": moto.endpoint,
               "accessKeyId": {"fromEnv": "DNS_CONTRACT_AWS_KEY"},
               "secretAccessKey": {"fromEnv": "DNS_CONTRACT_AWS_SECRET"},
               "pollInterval": "10ms", "syncTimeout": "20s"}
    mp = request.getfixturevalue("monkeypatch")
    mp.setenv("DNS_CONTRACT_AWS_KEY", "testing")
    mp.setenv("DNS_CONTRACT_AWS_SECRET", "testing-secret-value")
    provider = registry.build("dns", kind, options, secrets=secrets)
    client = moto.client("route53")

    def upsert(rec: Record) -> None:
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [{
            "Action": "UPSERT", "ResourceRecordSet": {
                "Name": rec.name, "Type": rec.type, "TTL": rec.ttl,
                "ResourceRecords": [{"Value": v} for v in rec.values]}}]})

    return World(kind, provider, upsert)

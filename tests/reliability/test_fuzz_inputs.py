"""Bad input from outside the plan file: FailoverPlan custom resources (the operator's parse
path and the CRD's schema), backup catalog entries read from a store, and the answers a
DNS server sends the rfc2136 provider. Each case is handled or rejected with a clear,
named error; none escapes as an unhandled exception.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import crd, registry
from controller.backups import naming
from controller.backups.filesystem import FilesystemBackupStore, FilesystemStoreOptions
from controller.backups.selection import NoRestorableBackup, choose
from controller.dns.rfc2136 import DnsServerError
from controller.model import PermanentError
from controller.plan import PlanError, parse_plan
from controller.secrets import Secrets
from tests.reliability.conftest import TALLY
from tests.reliability.test_fuzz import ALL_PATHS, BASE, JUNK, mutate

CRD = crd.crd()
SPEC_SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
# structural OpenAPI v3.0 (boolean exclusiveMinimum): draft 4 reads it as the API server does
SCHEMA = jsonschema.Draft4Validator(SPEC_SCHEMA)
SPECS = [p[1:] for p in ALL_PATHS if p[0] == "spec" and len(p) > 1]


def as_custom_resource(spec: Any) -> dict[str, Any]:
    """What the operator hands parse_plan for a FailoverPlan object (operator._runtime)."""
    return {"apiVersion": f"{crd.GROUP}/{crd.VERSION}", "kind": crd.KIND,
            "metadata": {"name": "fuzzed"}, "spec": spec}


def check_cr(spec: Any) -> None:
    """The API server's schema check, then the operator's parse: each either accepts or
    names the problem (parse_plan is laxer on scalars, e.g. `core: 0`, which the API
    server refuses before the controller sees it)."""
    for problem in SCHEMA.iter_errors(spec):
        assert problem.message
    try:
        parse_plan(as_custom_resource(spec), "FailoverPlan ns/fuzzed")
    except PlanError as err:
        assert err.problems and all(":" in p for p in err.problems), err.problems


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(SPECS), JUNK, st.booleans()), min_size=1,
                max_size=4))
def test_mutated_custom_resource_specs(mutations: list[Any]) -> None:
    TALLY["fuzz_cases"] += 1
    check_cr(mutate(BASE["spec"], mutations))


@settings(max_examples=150, deadline=None)
@given(st.recursive(JUNK, lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.sampled_from(
                        ["sites", "services", "steps", "backends", "trigger", "name", "x"]),
                        kids, max_size=4), max_leaves=12))
def test_random_custom_resource_specs(spec: Any) -> None:
    TALLY["fuzz_cases"] += 1
    check_cr(spec)


# --- backup catalog entries -----------------------------------------------------------------

ENTRY = {"id": "", "dataset": "orders", "kind": "daily", "takenAt": 1_700_000_000.0,
         "format": "basebackup", "size": 10, "plainSize": 9,
         "objects": [{"key": "k", "size": 10, "sha256": "0" * 64}],
         "encryption": {"algorithm": "AES-256-GCM", "chunkSize": 65536, "keyId": "x"},
         "createdBy": "cron", "createdAt": 1_700_000_000.0,
         "verifications": [{"passed": True, "summary": "ok", "at": 1.0}]}
ENTRY_PATHS = [("id",), ("dataset",), ("kind",), ("takenAt",), ("format",), ("size",),
               ("objects",), ("objects", 0), ("encryption",), ("verifications",),
               ("verifications", 0), ("verifications", 0, "passed"),
               ("verifications", 0, "summary"), ("location",), ("pgbackrest",)]


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("catalog")


def _entry_text(mutations: list[Any], raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    return json.dumps(mutate(ENTRY, mutations), default=str).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ENTRY_PATHS), JUNK, st.booleans()), max_size=4),
       st.one_of(st.none(), st.binary(max_size=40), st.just(b"[]"), st.just(b"null")))
def test_catalog_entries_are_listed_or_skipped(catalog_root: Path, mutations: list[Any],
                                               raw: bytes | None) -> None:
    TALLY["fuzz_cases"] += 1
    root = catalog_root / f"c{TALLY['fuzz_cases']}"
    good = naming.backup_name(taken_at=1_700_000_000.0, dataset="orders", kind="daily")
    bad = naming.backup_name(taken_at=1_700_000_100.0, dataset="orders", kind="daily")
    for name, text in ((good, json.dumps({**ENTRY, "id": good}).encode()),
                       (bad, _entry_text(mutations, raw))):
        (root / name).mkdir(parents=True)
        (root / naming.catalog_key(name)).write_bytes(text)
    store = FilesystemBackupStore(FilesystemStoreOptions.model_validate({"path": str(root)}),
                                  secrets=Secrets())
    listed = store.list(dataset="orders")  # an unreadable entry is skipped, never raised
    assert good in [b.id for b in listed]
    try:
        chosen, why = choose(listed)
    except NoRestorableBackup as exc:  # pragma: no cover - the good entry is verified
        raise AssertionError(exc) from None
    assert chosen.verified is True and why


# --- DNS answers to the rfc2136 provider ------------------------------------------------------

ZONE = "example.test."
Reply = Callable[[dns.message.Message], bytes]


class AnswerServer:
    """UDP + TCP on one free port, answering each query with `reply(query)` bytes."""

    def __init__(self) -> None:
        self.reply: Reply = lambda q: dns.message.make_response(q).to_wire()
        owner = self

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                head = sock.recv(2)
                if len(head) < 2:
                    return
                (length,) = struct.unpack("!H", head)
                data = b""
                while len(data) < length:
                    chunk = sock.recv(length - len(data))
                    if not chunk:
                        return
                    data += chunk
                wire = owner.answer(data)
                sock.sendall(struct.pack("!H", len(wire)) + wire)

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(owner.answer(data), self.client_address)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tcp)
        self.port = self.tcp.server_address[1]
        self.udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Udp)
        for server in (self.tcp, self.udp):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                             daemon=True).start()

    def answer(self, data: bytes) -> bytes:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return b""
        return self.reply(query)

    def stop(self) -> None:
        for server in (self.tcp, self.udp):
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AnswerServer, Any]]:
    server = AnswerServer()
    key = tmp_path_factory.mktemp("tsig") / "key"
    key.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==")
    provider = registry.build("dns", "rfc2136", {
        "zone": ZONE, "server": "127.0.0.1", "port": server.port,
        "tsig": {"name": "k", "secret": {"fromFile": str(key)}}, "timeout": "300ms"},
        secrets=Secrets())
    yield server, provider
    server.stop()


NAMES = st.sampled_from(["www.example.test.", "example.test.", "ns1.example.test.",
                         "other.test.", "a.b.www.example.test."])
RDATA = {"A": st.ip_addresses(v=4).map(str), "AAAA": st.ip_addresses(v=6).map(str),
         "TXT": st.text("abc xyz\"", max_size=8).map(lambda t: json.dumps(t)),
         "NS": st.sampled_from(["ns1.example.test.", "ns9.elsewhere.", "."]),
         "CNAME": st.sampled_from(["x.example.test.", "y.other."]),
         "SOA": st.integers(0, 2**32 - 1).map(
             lambda s: f"ns1.example.test. h.example.test. {s} 1 1 1 1")}
RRSET = st.sampled_from(sorted(RDATA)).flatmap(lambda t: st.tuples(
    NAMES, st.integers(0, 2**31 - 1), st.just(t), st.lists(RDATA[t], min_size=1, max_size=3)))
SECTION = st.lists(RRSET, max_size=4)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    kind = draw(st.sampled_from(["message", "message", "message", "bytes", "truncated"]))
    rcode = draw(st.sampled_from([dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL,
                                  dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.FORMERR]))
    answer, additional = draw(SECTION), draw(SECTION)
    junk = draw(st.binary(max_size=64))
    cut = draw(st.integers(0, 40))
    wrong_id = draw(st.booleans())

    def reply(query: dns.message.Message) -> bytes:
        if kind == "bytes":
            return junk
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        for section, rrsets in ((response.answer, answer), (response.additional, additional)):
            for name, ttl, rdtype, values in rrsets:
                section.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, values))
        if wrong_id:
            response.id = (query.id + 1) % 65536
        wire = response.to_wire()
        return wire[:cut] if kind == "truncated" else wire

    return reply


ALLOWED = (PermanentError, DnsServerError, ConnectionError, TimeoutError)


@settings(max_examples=200, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(replies(), st.sampled_from(["records", "nameservers"]))
def test_dns_answers_are_read_or_refused_by_name(answers: tuple[AnswerServer, Any],
                                                 reply: Reply, call: str) -> None:
    TALLY["fuzz_cases"] += 1
    server, provider = answers
    server.reply = reply
    try:
        if call == "records":
            for rec in provider.records(names=["www.example.test."]):
                assert rec.name == "www.example.test." and rec.values
        else:
            for ns in provider.nameservers():
                assert ns.address and ns.port == server.port
    except ALLOWED as exc:
        assert str(exc), type(exc).__name__
        if isinstance(exc, ConnectionError | TimeoutError):  # names the server it asked
            assert "127.0.0.1" in str(exc) or "nameserver" in str(exc), str(exc)

"""The DNS step's link test, against real BIND and a real local HTTP(S) server.

The step (controller.steps.dns.Dns) writes the record on the BIND primary, verifies it on
all three authoritative servers, then reaches the service through the record's NEW
address (127.0.0.1) with the record's name as Host header and TLS SNI. Shown: a passing
HTTP and HTTPS test (the server saw the name, the certificate was checked against it),
TCP, and failures (nothing listening at the new address's port) that fail the step with
a clear, retryable reason after the records were written, then pass on the retry.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from controller.dns.linktest import LinkTestFailed
from controller.drill.servers.base import free_port
from controller.drill.servers.bind import BindServers
from controller.executor import _retryable
from controller.model import PermanentError, Record
from controller.plan import DnsParams, Step
from controller.steps import StepContext
from controller.steps.dns import Dns
from tests.contract.dns.test_rfc2136_bind import fresh, provider, served


class Site:
    """A tiny HTTP(S) server on 127.0.0.1: answers GET with `status`, keeps Host and SNI."""

    def __init__(self, *, port: int | None = None, status: int = 200,
                 tls: ssl.SSLContext | None = None):
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hosts.append(self.headers.get("Host", ""))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
        self.port = int(self.server.server_address[1])
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.close()


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `name` (the CA file the client trusts is itself)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "site.pem", directory / "site.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def dns_step(name: str, link: dict[str, Any], address: str = "127.0.0.1") -> Step:
    return Step.model_validate({"name": "dns-cutover", "action": "dns", "backend": "dns",
                                "params": {"records": [{"name": name, "type": "A", "ttl": 60,
                                                        "values": [address]}],
                                           "linkTest": link}})


def context(p: Any) -> StepContext:
    return StepContext(plan=None, run_id="run-1", level=1,  # type: ignore[arg-type]
                       backends=SimpleNamespace(dns=lambda _: p),  # type: ignore[arg-type]
                       lookup_evidence=lambda *_: {})


def cut_over(bind: BindServers, step: Step) -> dict[str, Any]:
    p = provider(bind)
    name = step.params["records"][0]["name"]
    p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.1",))])  # the old site
    ctx = context(p)
    return Dns().apply(step, ctx, Dns().prepare(step, ctx))


def test_http_link_test_goes_to_the_new_address_with_the_names_host(
        bind: BindServers, site: Site) -> None:
    name = fresh("www")
    url = f"http://{name.rstrip('.')}:{site.port}/health"
    evidence = cut_over(bind, dns_step(name, {"kind": "http", "url": url}))
    assert [s["name"] for s in evidence["servers"]] == ["ns1", "ns2", "ns3"]
    for server in evidence["servers"]:  # every authoritative server: answer, serial, latency
        assert server["answer"] == {f"{name} A": ["127.0.0.1"]}
        assert server["serial"] == evidence["serial"] and server["latencySeconds"] > 0
    link = evidence["linkTest"]
    assert link["kind"] == "http" and link["record"] == f"{name} A"
    [result] = link["results"]
    assert result["address"] == "127.0.0.1" and result["ok"] and result["status"] == 200
    assert result["latencySeconds"] > 0
    assert site.hosts == [f"{name.rstrip('.')}:{site.port}"]  # Host is the name, not the IP


def test_https_link_test_sends_the_name_as_sni_and_checks_the_certificate(
        bind: BindServers, tmp_path: Path) -> None:
    name = fresh("secure")
    cert, key = certificate(tmp_path, name.rstrip("."))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    site = Site(tls=tls)
    try:
        url = f"https://{name.rstrip('.')}:{site.port}/"
        evidence = cut_over(bind, dns_step(name, {"kind": "http", "url": url,
                                                  "caFile": str(cert),
                                                  "expectStatus": [200]}))
    finally:
        site.close()
    assert evidence["linkTest"]["results"][0]["status"] == 200
    assert site.sni == [name.rstrip(".")]


def test_a_dead_new_address_fails_the_step_clearly_and_the_retry_passes(
        bind: BindServers) -> None:
    name, port = fresh("dead"), free_port()
    url = f"http://{name.rstrip('.')}:{port}/health"
    step = dns_step(name, {"kind": "http", "url": url, "timeout": "2s"})
    p = provider(bind)
    p.apply(expected=[], desired=[Record(name, "A", 300, ("192.0.2.1",))])
    ctx = context(p)
    prepared = Dns().prepare(step, ctx)
    with pytest.raises(LinkTestFailed) as caught:
        Dns().apply(step, ctx, prepared)
    message = str(caught.value)
    assert message.startswith("link test through the new address failed")
    assert f"127.0.0.1: GET http://{name.rstrip('.')}:{port}/health: connection refused" \
        in message
    assert _retryable(caught.value) and not isinstance(caught.value, PermanentError)
    assert all(served(bind, ns, name) == ["127.0.0.1"] for ns in ("ns1", "ns2", "ns3"))
    late = Site(port=port)  # the service comes up: the executor's retry passes
    try:
        evidence = Dns().apply(step, ctx, prepared)
    finally:
        late.close()
    assert evidence["alreadyApplied"] and evidence["linkTest"]["results"][0]["ok"]
    assert len(evidence["servers"]) == 3


def test_a_wrong_status_fails_naming_it(bind: BindServers) -> None:
    site = Site(status=503)
    try:
        name = fresh("sick")
        step = dns_step(name, {"kind": "http", "url": f"http://{name.rstrip('.')}:"
                                                     f"{site.port}/", "expectStatus": [200]})
        with pytest.raises(LinkTestFailed, match=r"127\.0\.0\.1: GET .*: status 503, "
                                                 r"expected 200"):
            cut_over(bind, step)
    finally:
        site.close()


def test_tcp_link_test(bind: BindServers, site: Site) -> None:
    evidence = cut_over(bind, dns_step(fresh("tcp"), {"kind": "tcp", "port": site.port}))
    [result] = evidence["linkTest"]["results"]
    assert result == {**result, "address": "127.0.0.1", "ok": True, "port": site.port}
    with pytest.raises(LinkTestFailed, match=r"127\.0\.0\.1: tcp 127\.0\.0\.1:\d+: "
                                             "connection refused"):
        cut_over(bind, dns_step(fresh("tcp-dead"), {"kind": "tcp", "port": free_port()}))


def test_plan_validation_of_link_tests() -> None:
    records = [{"name": "www.example.test", "type": "A", "values": ["192.0.2.1"]}]
    ok = DnsParams.model_validate({"records": records, "linkTest": {
        "kind": "http", "url": "https://www.example.test/health"}})
    assert ok.link_test is not None and ok.link_test.record_name() == "www.example.test."
    bad = [({"kind": "http"}, "http needs url"),
           ({"kind": "tcp"}, "tcp needs port"),
           ({"kind": "tcp", "port": 443, "record": "api.example.test"},
            "no A/AAAA record to test")]
    for link, error in bad:
        with pytest.raises(ValidationError, match=error):
            DnsParams.model_validate({"records": records, "linkTest": link})
    cname = [{"name": "www.example.test", "type": "CNAME", "values": ["dc-b.example.net."]}]
    with pytest.raises(ValidationError, match="no A/AAAA record to test"):
        DnsParams.model_validate({"records": cname, "linkTest": {"kind": "tcp", "port": 443}})

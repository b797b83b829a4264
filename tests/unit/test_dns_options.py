"""DNS provider options and offline checks: every mistake names the field and the fix.

Covers the registry entries, option validation of both providers as a plan's `options:`
block is validated, TSIG secrets from a bare base64 value or a `tsig-keygen` key file
(never quoted in errors), and the RFC 2136 refusals made before anything is sent.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller import registry
from controller.dns.rfc2136 import Rfc2136DnsProvider, load_tsig_secret
from controller.dns.route53 import Route53DnsProvider
from controller.model import PermanentError, Record
from controller.secrets import SecretError, Secrets

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
KEY_FILE = f'key "failover-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'


def rfc(**over: Any) -> dict[str, Any]:
    return {"zone": "example.test", "server": "192.0.2.53",
            "tsig": {"name": "failover-key", "secret": {"fromEnv": "DNS_UNIT_TSIG"}}, **over}


def error(kind: str, options: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        registry.parse_options("dns", kind, options)
    return str(caught.value)


def test_registry_knows_both_providers() -> None:
    assert {"memory", "rfc2136", "route53"} <= set(registry.known_kinds("dns"))
    assert registry.load("dns", "rfc2136") is Rfc2136DnsProvider
    assert registry.load("dns", "route53") is Route53DnsProvider


@pytest.mark.parametrize("over, needle", [
    ({"server": "ns1.example.test"}, "server: 'ns1.example.test' is not an IP address"),
    ({"tsig": {"name": "k", "algorithm": "hmac-md5", "secret": {"fromEnv": "X"}}},
     "hmac-md5' is not accepted; use one of hmac-sha224, hmac-sha256"),
    ({"tsig": {"name": "k", "secret": "c2VjcmV0"}}, "tsig.secret"),
    ({"zone": "."}, "the root zone cannot be updated"),
    ({"nameservers": [{"address": "ns2"}]}, "nameservers[].address: 'ns2' is not an IP"),
    ({"verifyTimeout": "soon"}, "verifyTimeout"),
    ({"retries": 3}, "Extra inputs are not permitted"),
])
def test_rfc2136_option_errors_name_the_field(over: dict[str, Any], needle: str) -> None:
    assert needle in error("rfc2136", rfc(**over))


def test_rfc2136_options_normalise_and_accept_aliases() -> None:
    opts: Any = registry.parse_options("dns", "rfc2136", rfc(zone="Example.TEST",
                                                            verifyTimeout="1m"))
    assert opts.zone == "example.test." and opts.verify_timeout == 60.0
    assert "tsig" in error("rfc2136", {"zone": "example.test", "server": "192.0.2.53"})


@pytest.mark.parametrize("options, needle", [
    ({"hostedZoneId": "not a zone"}, "hostedZoneId: 'not a zone' is not a hosted zone id"),
    ({"hostedZoneId": "Z1", "weight": 10}, "weight/failover need setIdentifier"),
    ({"hostedZoneId": "Z1", "setIdentifier": "b", "weight": 1, "failover": "PRIMARY"},
     "set only one"),
    ({"hostedZoneId": "Z1", "failover": "BACKUP", "setIdentifier": "b"}, "failover"),
    ({"hostedZoneId": "Z1", "accessKeyId": {"fromEnv": "A"}},
     "accessKeyId and secretAccessKey go together"),
    ({"hostedZoneId": "Z1", "zone": "example.test"}, "Extra inputs are not permitted"),
])
def test_route53_option_errors_name_the_field(options: dict[str, Any], needle: str) -> None:
    assert needle in error("route53", options)


def test_route53_zone_id_prefix_is_accepted() -> None:
    opts: Any = registry.parse_options("dns", "route53", {"hostedZoneId": "/hostedzone/Z1"})
    assert opts.hosted_zone_id == "Z1"


def test_tsig_secret_from_a_keygen_file_or_bare() -> None:
    assert load_tsig_secret(KEY_FILE, key_name="failover-key", where="file k") == SECRET
    assert load_tsig_secret(f"{SECRET}\n", key_name="x", where="file k") == SECRET


def test_tsig_key_file_for_another_key_names_both_never_the_secret() -> None:
    with pytest.raises(SecretError) as caught:
        load_tsig_secret(KEY_FILE, key_name="other-key", where="file /etc/k")
    assert "holds key 'failover-key', but tsig.name is 'other-key'" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_secret_that_is_not_base64_is_refused_without_quoting_it() -> None:
    with pytest.raises(SecretError) as caught:
        load_tsig_secret("hunter2 is my password", key_name="k", where="file /etc/k")
    assert "file /etc/k is not a TSIG secret" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"nope\.key cannot be read"):
        registry.build("dns", "rfc2136", rfc(tsig={"name": "k", "secret": {
            "fromFile": str(tmp_path / "nope.key")}}), secrets=Secrets())


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A provider whose server is a closed port: these checks must fail before sending."""
    monkeypatch.setenv("DNS_UNIT_TSIG", KEY_FILE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return registry.build("dns", "rfc2136", rfc(server="127.0.0.1", port=port,
                                                timeout="100ms"), secrets=Secrets())


def test_rfc2136_refusals_before_sending(offline: Any) -> None:
    with pytest.raises(PermanentError, match=r"refusing to leave a\.example\.test\. A empty"):
        offline.apply(expected=[], desired=[Record("a.example.test.", "A", 60, ())])
    with pytest.raises(PermanentError, match=r"www\.other\.test\. is outside zone example\.test\."):
        offline.apply(expected=[], desired=[Record("www.other.test.", "A", 60, ("192.0.2.1",))])
    with pytest.raises(PermanentError, match=r"value 'not-an-ip' is not valid"):
        offline.apply(expected=[], desired=[Record("a.example.test.", "A", 60, ("not-an-ip",))])
    with pytest.raises(PermanentError, match=r"record a\.example\.test\. BOGUS"):
        offline.apply(expected=[], desired=[Record("a.example.test.", "BOGUS", 60, ("x",))])


def test_an_unreachable_primary_is_a_retryable_error_naming_it(offline: Any) -> None:
    with pytest.raises((TimeoutError, ConnectionError)) as caught:
        offline.apply(expected=[], desired=[Record("a.example.test.", "A", 60, ("192.0.2.1",))])
    assert "primary 127.0.0.1:" in str(caught.value)
    assert not isinstance(caught.value, PermanentError)
    assert SECRET not in str(caught.value)

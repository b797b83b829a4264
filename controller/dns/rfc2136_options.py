"""What an RFC 2136 backend is configured with: the zone, its servers, and the TSIG key.

Owns the `options:` of an `rfc2136` DNS backend and turning its secret into a TSIG key.
Why each rule:

- **Addresses, not names**: `server` and `nameservers[].address` must be IP addresses;
  updates and verification queries go straight to each server, never through a resolver
  that could answer from a cache or from another server.
- **Strong keys only**: `tsig.algorithm` is one of the HMAC-SHA2 family; hmac-md5 and
  hmac-sha1 are refused when the plan is validated, not when the first update is signed.
- **A secret never reaches a message**: `load_tsig_secret` takes a bare base64 secret or a
  `tsig-keygen` key file (whose key name must be `tsig.name`), and its errors name the
  SecretRef, never the secret.
- **Rejections name the cause**: a server's TSIG error is told as what to fix (BADKEY: the
  server does not know the key name; BADSIG: the secret or algorithm differs...).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

import dns.exception
import dns.name
import dns.tsig
from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller.plan import Duration
from controller.secrets import SecretError, SecretRef

ALGORITHMS = ("hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
_KEY_FILE = re.compile(r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>.*?)\}\s*;', re.S)


def _ip(value: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IP address; updates and queries go "
                         "straight to a server, so give its address (e.g. 192.0.2.53)") from None


class Nameserver(BaseModel):
    """One authoritative server to verify: its address, port and a label for evidence."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    address: str
    port: int = Field(53, ge=1, le=65535)
    name: str | None = Field(None, description="label in evidence; default address:port")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _ip(value, "nameservers[].address")

    @property
    def label(self) -> str:
        return self.name or f"{self.address}:{self.port}"


class TsigOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, description="key name as the server knows it")
    algorithm: str = "hmac-sha256"
    secret: SecretRef = Field(description="base64 secret or a tsig-keygen key file")

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        value = value.lower().rstrip(".")
        if value not in ALGORITHMS:
            raise ValueError(f"tsig.algorithm {value!r} is not accepted; use one of "
                             f"{', '.join(ALGORITHMS)} (hmac-md5 and hmac-sha1 are too weak)")
        return value


class Rfc2136Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    zone: str = Field(description="the zone to update, e.g. example.com")
    server: str = Field(description="IP address of the zone's primary (takes the updates)")
    port: int = Field(53, ge=1, le=65535)
    tsig: TsigOptions
    nameservers: list[Nameserver] = Field(
        default_factory=list,
        description="authoritative servers to verify; empty = the zone's NS set at `port`")
    timeout: Duration = Field(5.0, gt=0, description="per query or update")
    verify_timeout: Duration = Field(30.0, gt=0, alias="verifyTimeout",
                                     description="every server must serve the new values")

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            name = dns.name.from_text(value.strip().rstrip(".") + ".")
        except dns.exception.DNSException as exc:
            raise ValueError(f"zone: {value!r} is not a DNS name ({exc})") from None
        if name == dns.name.root:
            raise ValueError("zone: the root zone cannot be updated; give e.g. example.com")
        return name.to_text().lower()

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        return _ip(value, "server")


def load_tsig_secret(text: str, *, key_name: str, where: str) -> str:
    """The base64 secret from a bare secret or a BIND key file; errors never quote it."""
    text = text.strip()
    match = _KEY_FILE.search(text)
    if match:
        found = match.group("name").rstrip(".")
        if found.lower() != key_name.rstrip(".").lower():
            raise SecretError(f"secret {where} holds key {found!r}, but tsig.name is "
                              f"{key_name!r}; set tsig.name to {found!r} or use that key's file")
        secret = re.search(r'secret\s+"([^"]+)"', match.group("body"))
        if not secret:
            raise SecretError(f"secret {where}: key {found!r} has no `secret \"...\";` line")
        text = secret.group(1)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"secret {where} is not a TSIG secret: expected base64 or a "
                          "tsig-keygen key file") from None
    return text


def rejected_key(options: Rfc2136Options, exc: dns.tsig.PeerError) -> str:
    """Why the primary refused our signature, and what to check (never the secret)."""
    tsig = options.tsig
    return (f"primary {options.server}:{options.port} rejected TSIG key "
            f"{tsig.name!r} ({tsig.algorithm}): {_tsig_error(exc)}; check that the server has "
            f"key {tsig.name!r} with this algorithm and the secret in {tsig.secret.describe()}")


def _tsig_error(exc: dns.tsig.PeerError) -> str:
    names = {dns.tsig.PeerBadKey: "BADKEY (the server does not know this key name)",
             dns.tsig.PeerBadSignature: "BADSIG (the secret or algorithm differs)",
             dns.tsig.PeerBadTime: "BADTIME (clocks differ by more than the fudge)",
             dns.tsig.PeerBadTruncation: "BADTRUNC"}
    return names.get(type(exc), type(exc).__name__)

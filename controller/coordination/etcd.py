"""etcd coordination: one lease-bound key per plan, for plan-file deployments on several hosts.

Owns the `etcd` kind of `spec.coordination`, used the way Patroni uses etcd: the plan's
key `<prefix><plan>` (default `/failover/plans/NAME`) holds the holder's name and is bound
to an etcd lease of `ceil(ttl)` seconds. Why each rule:

- **Create-if-absent in one transaction**: a new holder grants a lease, then
  `txn(create_revision(key) == 0 → put key=holder with the lease)`; of any number of
  controllers racing, etcd lets exactly one create the key. The others get None.
- **The fencing token is the key's `create_revision`**: etcd's revision counter is global
  and only grows, so every new acquisition — by any holder, after any release or expiry —
  gets a larger token, while renewals by the holder keep the same one.
- **Renewal = lease keepalive, then a read of the key**: the key must still be bound to our
  lease. A lease that expired (TTL 0) or a key now bound to another lease means the lease
  was lost; we then try a fresh acquisition, which yields None while someone else holds
  the key, or a new, larger token when the key was free — a token that changed tells the
  caller the lease lapsed in between.
- **Unreachable is an error, never "nobody holds it"**: each HTTP call has a short timeout
  (min(ttl/3, 2 s), so a partition is noticed well before the lease expires); when every
  endpoint fails, acquire raises `CoordinationError` (a ConnectionError) naming the
  endpoints and the reason, and the caller stops acting. Server-side refusals (permission
  denied, a rejected login) are CoordinationErrors too, with the fix.
- **Plain HTTP(S) to etcd's v3 JSON gateway** (`/v3/...`, keys and values base64; etcd 3.4
  as Debian ships it), with urllib: no gRPC client, no new dependency. Proxies from the
  environment are ignored (etcd is reached directly). TLS with `caFile`, and a client
  certificate (`certFile` + `keyFile`) when etcd asks for one.
- **Credentials**: `username` with a `password` secret reference, sent only over https;
  the auth token etcd returns is per member, so it is taken again after switching
  endpoints or when etcd says it is invalid. Neither ever reaches a message.
- `release` revokes the lease, which deletes the key at once, so the next holder need not
  wait for the TTL.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import ssl
import threading
import urllib.error
import urllib.request
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.coordination import CoordinationError
from controller.secrets import SecretError, SecretRef, Secrets, redact, remember

DEFAULT_PREFIX = "/failover/plans/"
MAX_TIMEOUT = 2.0  # seconds per HTTP call, at most
MIN_TIMEOUT = 0.05
# gRPC codes the gateway returns in {"code": N}
NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE, UNAUTHENTICATED = 5, 7, 14, 16
INVALID_ARGUMENT, DEADLINE_EXCEEDED = 3, 4


def _endpoint(url: str) -> str:
    """An etcd client URL: http(s)://host[:port] (2379 when none), nothing else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL; write e.g. "
                         "https://etcd1.example.com:2379")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put no credentials in the URL; use username and password (a secret "
                         "reference)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a path; give only scheme, host and port, e.g. "
                         "https://etcd1.example.com:2379")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return f"{parts.scheme}://{parts.netloc}" + ("" if port else ":2379")


Endpoint = Annotated[str, AfterValidator(_endpoint)]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    endpoints: list[Endpoint] = Field(description="etcd client URLs, e.g. "
                                      "https://etcd1.example.com:2379")
    prefix: str = Field(DEFAULT_PREFIX, description="the plan's key is <prefix><plan name>")
    ca_file: str | None = Field(None, alias="caFile",
                                description="CA bundle that signs etcd's certificate")
    cert_file: str | None = Field(None, alias="certFile",
                                  description="client certificate, when etcd asks for one")
    key_file: str | None = Field(None, alias="keyFile", description="its private key")
    username: str | None = Field(None, min_length=1)
    password: SecretRef | None = None

    @field_validator("endpoints")
    @classmethod
    def _some(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("list at least one etcd client URL, e.g. "
                             "[https://etcd1.example.com:2379]")
        return urls

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/"):
            raise ValueError(f"{value!r} must start and end with '/', e.g. {DEFAULT_PREFIX} "
                             "(the plan's key is the prefix followed by its name)")
        return value

    @model_validator(mode="after")
    def _security(self) -> Options:
        https = all(u.startswith("https://") for u in self.endpoints)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both certFile and keyFile (a client certificate), or "
                             "neither")
        if (self.ca_file or self.cert_file) and not https:
            raise ValueError("caFile/certFile/keyFile are TLS settings; every endpoint must "
                             "then be https://")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password (a secret reference), or "
                             "neither")
        if self.password is not None and not https:
            raise ValueError("a password is only sent over TLS; make every endpoint "
                             "https://")
        return self


def build(options: Options, *, plan: str, secrets: Secrets | None = None) -> EtcdCoordinator:
    return EtcdCoordinator(options, plan=plan, secrets=secrets)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str | None) -> str:
    return base64.b64decode(b64 or "").decode(errors="replace")


def http_timeout(ttl: float) -> float:
    """Per HTTP call: a third of the lease, at most 2 s, so a partition is seen in time."""
    return max(MIN_TIMEOUT, min(ttl / 3, MAX_TIMEOUT))


class _Refused(Exception):
    """etcd answered with an error: its gRPC code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class _Unreachable(Exception):
    pass


class EtcdCoordinator:
    """The `etcd` coordinator: `acquire` takes or renews the plan's lease-bound key."""

    def __init__(self, options: Options, *, plan: str, secrets: Secrets | None = None):
        self.options = options
        self.key = options.prefix + plan
        self._key64 = _b64(self.key)
        self._password: str | None = None
        if options.password is not None:
            try:
                self._password = (secrets or Secrets()).reveal(options.password).strip()
            except SecretError as exc:
                raise CoordinationError(f"{self.describe()}: {exc}") from None
        context: ssl.SSLContext | None = None
        if any(u.startswith("https://") for u in options.endpoints):
            try:
                context = ssl.create_default_context(cafile=options.ca_file)
                if options.cert_file and options.key_file:
                    context.load_cert_chain(options.cert_file, options.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise CoordinationError(f"{self.describe()}: TLS files cannot be used: "
                                        f"{exc}") from None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        self._endpoint = 0  # the one that answered last; tried first
        self._auth: tuple[int, str] | None = None  # (endpoint index, etcd auth token)
        self._lease: str | None = None
        self._holder: str | None = None
        self._token: int | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"EtcdCoordinator({self.describe()})"

    def describe(self) -> str:
        return f"etcd {','.join(self.options.endpoints)} {self.key}"

    # --- the protocol --------------------------------------------------------------------

    def acquire(self, *, holder: str, ttl: float) -> int | None:
        timeout = http_timeout(ttl)
        with self._mutex:
            if self._lease is not None:
                if holder != self._holder:
                    return None
                if self._keepalive(self._lease, timeout):
                    kv = self._range(timeout)
                    if kv is not None and kv.get("lease") == self._lease:
                        return self._token
                self._lease, self._holder, self._token = None, None, None  # lost it
            kv = self._range(timeout)
            if kv is not None:
                return self._adopt(kv, holder, timeout)
            lease = self._grant(ttl, timeout)
            reply = self._call("/v3/kv/txn", {
                "compare": [{"key": self._key64, "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"}],
                "success": [{"request_put": {"key": self._key64, "value": _b64(holder),
                                             "lease": lease}},
                            {"request_range": {"key": self._key64}}],
                "failure": [{"request_range": {"key": self._key64}}]}, timeout)
            kvs = reply["responses"][-1]["response_range"].get("kvs") or []
            if not reply.get("succeeded"):
                self._revoke(lease, timeout)
                return self._adopt(kvs[0], holder, timeout) if kvs else None
            self._lease, self._holder = lease, holder
            self._token = int(kvs[0]["create_revision"])
            return self._token

    def release(self, *, holder: str) -> None:
        with self._mutex:
            if self._lease is None or holder != self._holder:
                return
            lease = self._lease
            self._lease, self._holder, self._token = None, None, None
            self._revoke(lease, MAX_TIMEOUT)

    def holder(self, *, ttl: float = 3 * MAX_TIMEOUT) -> tuple[str, int] | None:
        """Who holds the plan's key now, and its token (for status and messages)."""
        with self._mutex:
            kv = self._range(http_timeout(ttl))
        return None if kv is None else (_text(kv.get("value")), int(kv["create_revision"]))

    # --- etcd calls ----------------------------------------------------------------------

    def _adopt(self, kv: dict[str, Any], holder: str, timeout: float) -> int | None:
        """The key exists: ours only if it names this holder and its lease still lives (a
        reply we lost, or this holder's earlier object); then we keep that lease alive."""
        lease = kv.get("lease")
        if _text(kv.get("value")) != holder or not lease or not self._keepalive(lease,
                                                                               timeout):
            return None
        self._lease, self._holder = lease, holder
        self._token = int(kv["create_revision"])
        return self._token

    def _range(self, timeout: float) -> dict[str, Any] | None:
        kvs = self._call("/v3/kv/range", {"key": self._key64}, timeout).get("kvs") or []
        return dict(kvs[0]) if kvs else None

    def _grant(self, ttl: float, timeout: float) -> str:
        reply = self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))}, timeout)
        if reply.get("error") or not reply.get("ID"):
            raise CoordinationError(f"{self.describe()}: no lease granted: "
                                    f"{redact(str(reply.get('error')))}")
        return str(reply["ID"])

    def _keepalive(self, lease: str, timeout: float) -> bool:
        """True while the lease lives (etcd answers TTL 0, or omits it, once it expired)."""
        reply = self._call("/v3/lease/keepalive", {"ID": lease}, timeout)
        result = reply.get("result") or {}
        if reply.get("error"):
            error = reply["error"]
            raise CoordinationError(f"{self.describe()}: keepalive refused: "
                                    f"{redact(str(error.get('message', error)))}")
        return int(result.get("TTL") or 0) > 0

    def _revoke(self, lease: str, timeout: float) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": lease}, timeout)
        except _Refused as exc:
            if exc.code != NOT_FOUND:  # expired already: nothing left to give up
                raise

    def _call(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """POST to the first endpoint that answers (starting with the last good one)."""
        endpoints = self.options.endpoints
        failures = []
        for step in range(len(endpoints)):
            index = (self._endpoint + step) % len(endpoints)
            try:
                reply = self._post_authenticated(index, path, body, timeout)
            except _Unreachable as exc:
                failures.append(f"{endpoints[index]}: {exc}")
                continue
            except _Refused as exc:
                if exc.code == UNAVAILABLE or exc.code == DEADLINE_EXCEEDED:
                    failures.append(f"{endpoints[index]}: {exc.message}")
                    continue
                raise self._refused(index, path, exc) from None
            self._endpoint = index
            return reply
        raise CoordinationError(f"etcd unreachable for {self.key}: " + "; ".join(failures))

    def _post_authenticated(self, index: int, path: str, body: dict[str, Any],
                            timeout: float) -> dict[str, Any]:
        if self.options.username is None:
            return self._post(index, path, body, timeout, token=None)
        for attempt in (1, 2):
            if self._auth is None or self._auth[0] != index:
                self._auth = (index, self._login(index, timeout))
            try:
                return self._post(index, path, body, timeout, token=self._auth[1])
            except _Refused as exc:
                if exc.code != UNAUTHENTICATED or attempt == 2:
                    raise
                self._auth = None  # expired or issued by another member: log in again
        raise AssertionError("unreachable")

    def _login(self, index: int, timeout: float) -> str:
        try:
            reply = self._post(index, "/v3/auth/authenticate",
                               {"name": self.options.username, "password": self._password},
                               timeout, token=None)
        except _Refused as exc:
            if exc.code in (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED):
                raise CoordinationError(
                    f"etcd {self.options.endpoints[index]}: login as {self.options.username} "
                    f"rejected ({redact(exc.message)}); check the password secret "
                    f"({self._password_ref()})") from None
            raise
        token = reply.get("token")
        if not token:
            raise CoordinationError(f"etcd {self.options.endpoints[index]}: login as "
                                    f"{self.options.username} gave no token; is "
                                    "authentication enabled (etcdctl auth enable)?")
        remember(str(token))  # scrubbed from any message, like the password
        return str(token)

    def _password_ref(self) -> str:
        return self.options.password.describe() if self.options.password else "none"

    def _post(self, index: int, path: str, body: dict[str, Any], timeout: float, *,
              token: str | None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = token
        request = urllib.request.Request(self.options.endpoints[index] + path,
                                         data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                error = json.loads(raw)
                code, message = int(error.get("code", 2)), str(error.get("message")
                                                               or error.get("error"))
            except (ValueError, AttributeError):
                code, message = 2, f"HTTP {exc.code}: {raw[:200].decode(errors='replace')}"
            raise _Refused(code, redact(message)) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Unreachable(f"no answer within {timeout:g} s") from None
            raise _Unreachable(redact(str(exc.reason))) from None
        except TimeoutError:
            raise _Unreachable(f"no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(redact(f"{type(exc).__name__}: {exc}")) from None
        try:
            # keepalive streams: one JSON object per line; we send one request, read one
            line = raw.strip().split(b"\n", 1)[0]
            return dict(json.loads(line or b"{}"))
        except ValueError:
            raise _Unreachable(f"not the etcd v3 JSON gateway: {raw[:100]!r}") from None

    def _refused(self, index: int, path: str, exc: _Refused) -> CoordinationError:
        where = f"etcd {self.options.endpoints[index]}"
        if exc.code == PERMISSION_DENIED:
            return CoordinationError(f"{where}: permission denied on {self.key} ({path}); "
                                     f"grant {self.options.username or 'the user'} readwrite "
                                     f"on the prefix {self.options.prefix}")
        if exc.code == INVALID_ARGUMENT and "user name is empty" in exc.message:
            return CoordinationError(f"{where} requires authentication; set "
                                     "spec.coordination.options.username and password")
        return CoordinationError(f"{where} refused {path} for {self.key}: {exc.message}")


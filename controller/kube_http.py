"""HTTP to a Kubernetes API server: one pooled urllib3 client, JSON in and out, the API's
errors named, watches streamed line by line.

Owns the wire, so `controller.kube` speaks only in API paths and objects: a request is
(method, path, query, body) and its answer the decoded JSON, or a named
`controller.kube_errors` exception built from the server's Status (`error_from_status`),
or `Unavailable` when no answer came (refused, reset, timed out, TLS failure); a watch
answer is streamed as lines (`stream`). The only module that imports urllib3. The
Authorization header comes from the `ClientConfig`'s credentials on each request (a
rotated token file is picked up) and never enters a message. The User-Agent,
`failover-controller`, is the field manager the API server records for our writes.

Connections: up to `CONNECTIONS` kept open for reuse (the operator's workers and extras,
its watch): fewer, and urllib3 closes every connection beyond them after its request, a
new TCP + TLS handshake each (seen with 10,000 plans). urllib3's default retries stand
(3, for a connection that could not be made or a pooled one the server had closed).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from controller.kube_config import ClientConfig
from controller.kube_errors import Unavailable, _ref, error_from_status

CONNECTIONS = 72
USER_AGENT = "failover-controller"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

Timeout = float | tuple[float, float]
MEMO_LIMIT = 50_000  # distinct strings shared by `decode` before it starts afresh
_memo: dict[str, str] = {}


def _shared(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys, and whose short all-letter values ("Healthy", "True",
    "memory"), are the very strings of every earlier object: an operator holding the last
    copy of 1,000 plans holds each field name once, not 1,000 times (~7 KB of a quiet
    plan's 18 KB). Other values (names with digits or dashes, versions, uids, times) are
    not shared, so the memo holds a vocabulary, not the data; past `MEMO_LIMIT` it starts
    afresh."""
    memo = _memo
    if len(memo) > MEMO_LIMIT:
        memo.clear()
    share = memo.setdefault
    return {share(k, k): share(v, v) if isinstance(v, str) and len(v) <= 32 and v.isalpha()
            else v for k, v in pairs}


decode = json.JSONDecoder(object_pairs_hook=_shared).decode


def path(*parts: str) -> str:
    """An API path from its segments, each quoted: path("apis", group, version, ...)."""
    return "/" + "/".join(quote(p, safe="") for p in parts if p)


class Call:
    """What a request is about, for its error message: the verb and the object."""

    __slots__ = ("group", "name", "namespace", "plural", "verb")

    def __init__(self, verb: str, group: str, plural: str, namespace: str | None,
                 name: str | None = None):
        self.verb, self.group, self.plural = verb, group, plural
        self.namespace, self.name = namespace, name


class Transport:
    """A pooled HTTP(S) client for one API server."""

    def __init__(self, config: ClientConfig, *, connections: int = CONNECTIONS):
        self.config = config
        self.host = config.host
        pool: dict[str, Any] = {"maxsize": connections, "num_pools": 4}
        if config.tls is not None:
            pool["ssl_context"] = config.tls
        if config.server_name:
            pool["server_hostname"] = config.server_name
        self._pool = urllib3.PoolManager(**pool)

    def __repr__(self) -> str:  # never the credentials
        return f"Transport(host={self.host!r})"

    def close(self) -> None:
        self._pool.clear()

    def request(self, method: str, url_path: str, call: Call, *,
                query: dict[str, Any] | None = None, body: Any = None,
                content_type: str = JSON, timeout: Timeout) -> Any:
        """The decoded JSON answer (`{}` for an empty one)."""
        resp = self._send(method, url_path, call, query=query, body=body,
                          content_type=content_type, timeout=timeout, stream=False)
        return decode(resp.data.decode()) if resp.data else {}

    def stream(self, url_path: str, call: Call, *, query: dict[str, Any],
               timeout: Timeout) -> Generator[bytes, None, None]:
        """GET a streamed answer (a watch: one JSON event per line) and yield its non-empty
        lines as they arrive; an unfinished last line (the stream broke off) is not one.
        `Unavailable` when it breaks off; the connection is closed, never pooled again
        half-read, however the iteration ends."""
        resp = self._send("GET", url_path, call, query=query, body=None, content_type=JSON,
                          timeout=timeout, stream=True)
        try:
            buffer = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                yield from (line for line in complete if line.strip())
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            what = _ref(call.group, call.plural, call.namespace)
            raise Unavailable(f"Kubernetes API: {call.verb} {what} broke off "
                              f"({type(exc).__name__}); watch again from the last "
                              "resourceVersion", status=0) from None
        finally:  # close first: a half-read stream must never go back to the pool
            resp.close()
            resp.release_conn()

    def _send(self, method: str, url_path: str, call: Call, *, query: dict[str, Any] | None,
              body: Any, content_type: str, timeout: Timeout,
              stream: bool) -> urllib3.BaseHTTPResponse:
        """The answer of a 2xx status (unread with `stream`); else the named error."""
        headers = {"Accept": JSON, "User-Agent": USER_AGENT}
        auth = self.config.credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.host + url_path
        if query:
            url += "?" + urlencode({k: _text(v) for k, v in query.items() if v is not None})
        limit = (urllib3.Timeout(connect=timeout[0], read=timeout[1])
                 if isinstance(timeout, tuple) else urllib3.Timeout(total=timeout))
        try:
            resp = self._pool.request(method, url, body=data, headers=headers,
                                      timeout=limit, preload_content=not stream)
            if 200 <= resp.status <= 299:
                return resp
            raw = resp.data  # the Status saying why, read whole
            resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            what = _ref(call.group, call.plural, call.namespace, call.name)
            raise Unavailable(f"Kubernetes API: {call.verb} {what}: no answer from "
                              f"{self.host} ({type(exc).__name__}: {exc}); retry later",
                              status=0) from None
        raise error_from_status(resp.status, raw, verb=call.verb, group=call.group,
                                plural=call.plural, namespace=call.namespace,
                                name=call.name, host=self.host)


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

"""HAProxy traffic backend: per-site server weights over the runtime API (admin socket).

Owns traffic redirection for an edge run by HAProxy: the plan names one HAProxy backend
and which of its servers belong to which site (`servers: {dc-a: [web1], dc-b: [web2]}`),
and weights are keyed by site like the `TrafficBackend` protocol says. Why each rule:

- **A site's weight** is the weight each of its servers carries: `srv_uweight` from
  `show servers state BE`, or 0 when the server is in maintenance or drain (flags in its
  `srv_admin_state`), since it then takes no new traffic. If the servers of one
  site disagree (one of them in maintenance, say), the site is reported per server as
  `site/server` keys, which `shift` and `revert` also accept: a revert then restores each
  server exactly instead of averaging them away.
- **Target first**: servers that gain weight are raised first (`set server BE/S weight W`
  then `set server BE/S state ready`, in that order: `state ready` alone does not restore a
  weight that was set to 0, and the weight is in place before the server takes traffic)
  and read back; every server that is to carry traffic must be up (HAProxy's health
  check), also on a retry; only then are the others lowered (`weight 0`: no new requests,
  requests in flight finish). Lowering first would open a window of 503s.
- **Read back**: after each phase the state is read again and compared with what was
  asked; a difference is an error naming both. A server already at the asked weight is
  not touched, so `shift` and `revert` are idempotent (a repeat sends no command).
- **Revert restores states, not only weights**: `snapshot()` saves each server's
  administrative state as an operator set it (`ready`, `drain` or `maint`), its
  configured weight and its operational state; `revert` with that snapshot puts a server
  that was in drain or maintenance back there with its weight (`state` before `weight`
  when it goes back to being held, so it never takes traffic on the way), instead of
  leaving it `ready` with weight 0. The operational state (up/down) belongs to the health
  check and is only reported, never forced. Old evidence without a snapshot restores the
  weights alone.
- **Fencing**: `fencing.check()` runs right before each round trip that changes
  anything, so a cancelled step (timeout, lost lease) sends no further command. The
  runtime API cannot carry a fencing token (there is nothing to compare it with on the
  HAProxy side), so a deposed controller's write is not refused here: the executor's
  cancellation and the lease are HAProxy's protection.
- **Errors**: an unknown backend or server, a socket without `level admin` or a weight
  HAProxy cannot take is a `PermanentError` (retrying cannot fix it) that names what
  exists; a socket that is missing, refuses or times out is a `ConnectionError`/`OSError`
  naming the socket, retried by the executor within the step's bounds.
- **Evidence**: weights before and after, the runtime API commands sent, each server's
  state after, and with `observe` the split actually served afterwards: N requests sent
  through the frontend, counted by the response header that names the answering site.
"""

from __future__ import annotations

import http.client
import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller import fencing
from controller.model import Evidence, PermanentError, Weights
from controller.plan import Duration
from controller.traffic import TrafficBackend

log = logging.getLogger(__name__)

MAX_WEIGHT = 256  # HAProxy: "Absolute weight can only be between 0 and 256 inclusive."
_UP = (1, 2)  # srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping
# srv_admin_state flags (HAProxy's enum srv_admin): forced, inherited or DNS-resolution
# maintenance, and forced or inherited drain. 0x04 (configured `disabled`) and 0x40 (FQDN
# set from the CLI) are only markers: `state ready` clears 0x01 but leaves 0x04 set.
_MAINT, _DRAIN = 0x01 | 0x02 | 0x20, 0x08 | 0x10
_FORCED_MAINT, _FORCED_DRAIN = 0x01, 0x08  # what `set server BE/S state maint|drain` sets
ADMIN_STATES = ("ready", "drain", "maint")


def _saved_servers(snapshot: Evidence | None) -> dict[str, tuple[str, int]]:
    """server -> (admin state, configured weight) from a `snapshot()`; {} without one."""
    servers = (snapshot or {}).get("servers") or {}
    out: dict[str, tuple[str, int]] = {}
    for name, saved in servers.items():
        admin, weight = (saved.get("admin"), saved.get("weight")) if isinstance(
            saved, dict) else (None, None)
        if admin not in ADMIN_STATES or isinstance(weight, bool) or not isinstance(
                weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise PermanentError(f"saved HAProxy state of server {name!r} is not "
                                 f"{{admin: ready|drain|maint, weight: 0..{MAX_WEIGHT}}}: "
                                 f"{saved!r}; the step's evidence was changed by hand")
        out[name] = (admin, weight)
    return out


def _effective(saved: tuple[str, int]) -> int:
    return saved[1] if saved[0] == "ready" else 0


class ObserveOptions(BaseModel):
    """After a change, send `requests` requests to `url` and count who answered."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    url: str = Field(description="a URL served through the HAProxy frontend")
    requests: int = Field(50, ge=1, le=10_000)
    header: str = Field("X-Served-By", description="response header naming the site "
                        "(or a server listed in `servers`) that answered")
    timeout: Duration = Field(2.0, gt=0, description="per request")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"observe.url {value!r}: give an http:// or https:// URL "
                             "served through the HAProxy frontend")
        return value


class HaproxyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    socket: str = Field(description="admin socket with `level admin`: a unix socket path "
                        "(/run/haproxy/admin.sock) or host:port")
    backend: str = Field(min_length=1, description="the HAProxy backend holding the servers")
    servers: dict[str, list[str]] = Field(
        min_length=1, description="site name -> its servers in the backend, "
        "e.g. {dc-a: [web1], dc-b: [web2]}")
    timeout: Duration = Field(2.0, gt=0, description="per runtime API command")
    observe: ObserveOptions | None = None

    @field_validator("socket")
    @classmethod
    def _socket(cls, value: str) -> str:
        address(value)
        return value

    @model_validator(mode="after")
    def _servers(self) -> HaproxyOptions:
        seen: dict[str, str] = {}
        for site, names in self.servers.items():
            if not names:
                raise ValueError(f"servers.{site}: list at least one HAProxy server of the "
                                 "site, e.g. [web1]")
            for name in names:
                if not name or "/" in name or any(c.isspace() for c in name):
                    raise ValueError(f"servers.{site}: {name!r} is not an HAProxy server name")
                if name in seen:
                    raise ValueError(f"servers: {name!r} is listed under both {seen[name]!r} "
                                     f"and {site!r}; a server belongs to one site")
                seen[name] = site
        return self


def address(value: str) -> str | tuple[str, int]:
    """'/run/haproxy/admin.sock' -> the path; 'host:port' or '[::1]:port' -> (host, port)."""
    if "/" in value:
        return value
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"socket {value!r}: give a unix socket path such as "
                         "/run/haproxy/admin.sock or host:port such as 127.0.0.1:9999")
    return host, int(port)


class HaproxyStateError(RuntimeError):
    """HAProxy's state read back is not what was asked (or the target is down); a retry
    may succeed once the server is up or a concurrent change has settled."""


@dataclass(frozen=True)
class ServerState:
    """One row of `show servers state`: what decides how much traffic the server gets."""

    name: str
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit flags: maintenance or drain (see _MAINT, _DRAIN)
    weight: int  # srv_uweight: the weight set by config or `set server ... weight`

    @property
    def held(self) -> bool:
        """In maintenance or drain: no new traffic whatever the weight."""
        return bool(self.admin_state & (_MAINT | _DRAIN))

    @property
    def effective(self) -> int:
        return 0 if self.held else self.weight

    @property
    def admin(self) -> str:
        """The state an operator set (`set server ... state`): ready, drain or maint."""
        return ("maint" if self.admin_state & _FORCED_MAINT else
                "drain" if self.admin_state & _FORCED_DRAIN else "ready")

    def saved(self) -> dict[str, Any]:
        return {"admin": self.admin, "weight": self.weight, "op": self.op_state}

    def describe(self) -> str:
        admin = ("maint" if self.admin_state & _MAINT else "drain" if self.admin_state & _DRAIN
                 else "ready")
        health = {0: " DOWN", 1: " starting", 3: " stopping"}.get(self.op_state, "")
        return f"{admin} weight {self.weight}{health}"


class HaproxyTrafficBackend(TrafficBackend):
    """Shifts traffic between sites by setting HAProxy server weights (see the module doc)."""

    Options = HaproxyOptions

    def __init__(self, options: HaproxyOptions, *, secrets: Any = None):
        self.options = options
        self._address = address(options.socket)
        self._site_of = {n: site for site, names in options.servers.items() for n in names}

    # --- the TrafficBackend protocol ------------------------------------------------------

    def current(self) -> Weights:
        return self._weights(self._read())

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        if to not in weights:
            raise PermanentError(f"weights {dict(weights)} give the target {to!r} no weight; "
                                 f"add {to!r} to them")
        return self._apply(weights, first=to, to=to)

    def snapshot(self) -> Evidence:
        """The weights per site plus each listed server's admin state, weight and
        operational state, read in one `show servers state`."""
        states = self._read()
        return {"weights": self._weights(states),
                "servers": {n: states[n].saved() for n in sorted(self._site_of)}}

    def revert(self, *, to: Weights, snapshot: Evidence | None = None) -> Evidence:
        """Restore `to`; a server whose weight in `to` is what the snapshot saw also
        gets its saved admin state and configured weight back."""
        return self._apply(to, first=None, saved=_saved_servers(snapshot))

    def ready(self) -> str:
        """For `failoverctl ready`: the socket answers and every listed server exists."""
        states = self._read()
        return (f"backend {self.options.backend}: " + ", ".join(
            f"{site} {'+'.join(states[n].describe() for n in names)}"
            for site, names in self.options.servers.items()))

    # --- applying weights -----------------------------------------------------------------

    def _apply(self, weights: Weights, *, first: str | None, to: str | None = None,
               saved: dict[str, tuple[str, int]] | None = None) -> Evidence:
        desired = self._resolve(weights)
        # servers to bring back exactly (admin state and configured weight): only where
        # the weight asked is the one the snapshot saw, so `to` always wins
        exact = {n: s for n, s in (saved or {}).items()
                 if n in desired and _effective(s) == desired[n]}
        states = self._read()
        before = self._weights(states)
        order = sorted(desired, key=lambda n: (self._site_of[n] != first, n))
        raise_ = [n for n in order if desired[n] > states[n].effective]
        lower = [n for n in order if n not in raise_ and (
            desired[n] < states[n].effective
            or (n in exact and exact[n] != (states[n].admin, states[n].weight)))]
        sent: list[str] = []
        if raise_:
            cmds = []
            for n in raise_:
                cmds.append(f"set server {self._server(n)} weight {desired[n]}")
                if states[n].held:
                    cmds.append(f"set server {self._server(n)} state ready")
            self._send(cmds)
            sent += cmds
            states = self._read()
            self._check(states, {n: desired[n] for n in raise_},
                        when="after enabling, before draining the others")
        if lower:
            # whatever is to carry the traffic must be up before anything is drained (also
            # on a retry, when the target was already enabled by an earlier attempt)
            self._check_up(states, [n for n in order if desired[n] > 0])
            cmds = [c for n in lower for c in self._lowering(n, states[n], desired[n],
                                                             exact.get(n))]
            if cmds:
                self._send(cmds)
                sent += cmds
                states = self._read()
        self._check(states, desired, when="after the change")
        self._check_exact(states, exact)
        evidence: Evidence = {"before": before, "after": self._weights(states),
                              "commands": sent,
                              "servers": {n: states[n].describe() for n in sorted(desired)}}
        if to is not None:
            evidence["to"] = to
        if self.options.observe is not None:
            evidence["observed"] = self.observe()
        log.info("haproxy %s: %s -> %s (%d commands)", self.options.backend, before,
                 evidence["after"], len(sent))
        return evidence

    def _lowering(self, name: str, state: ServerState, weight: int,
                  exact: tuple[str, int] | None) -> list[str]:
        """Commands that take one server down to `weight` (or to its saved state)."""
        server = self._server(name)
        if exact is None:
            return [f"set server {server} weight {weight}"]
        admin, configured = exact
        set_state = [f"set server {server} state {admin}"] if admin != state.admin else []
        set_weight = ([f"set server {server} weight {configured}"]
                      if configured != state.weight else [])
        # back to drain/maint: hold it first, so a weight raised on the way is never
        # served; back to ready: the weight first, so it is in place before it serves
        return set_state + set_weight if admin != "ready" else set_weight + set_state

    def _check_exact(self, states: dict[str, ServerState],
                     exact: dict[str, tuple[str, int]]) -> None:
        wrong = [f"{self._label(n)} is {states[n].describe()}, saved {admin} weight {weight}"
                 for n, (admin, weight) in exact.items()
                 if (states[n].admin, states[n].weight) != (admin, weight)]
        if wrong:
            raise HaproxyStateError(f"HAProxy backend {self.options.backend} after the "
                                    "revert: " + "; ".join(wrong))

    def _resolve(self, weights: Weights) -> dict[str, int]:
        """Weights by site (or site/server) -> weight per server; unknown keys are refused."""
        sites = self.options.servers
        unknown = [k for k in weights if k not in sites and not self._is_server_key(k)]
        if unknown:
            raise PermanentError(f"unknown destinations {sorted(unknown)}; have {sorted(sites)}")
        desired: dict[str, int] = {}
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or not (
                    0 <= weight <= MAX_WEIGHT):
                raise PermanentError(f"weight {weight!r} for {key!r} cannot be set: HAProxy "
                                     f"weights are whole numbers from 0 to {MAX_WEIGHT}")
            for name in sites[key] if key in sites else [key.split("/", 1)[1]]:
                desired[name] = weight
        return desired

    def _is_server_key(self, key: str) -> bool:
        site, _, name = key.partition("/")
        return self._site_of.get(name) == site

    def _weights(self, states: dict[str, ServerState]) -> Weights:
        out: Weights = {}
        for site, names in self.options.servers.items():
            found = {states[n].effective for n in names}
            if len(found) == 1:
                out[site] = found.pop()
            else:  # the servers of this site disagree: report each one
                out.update({f"{site}/{n}": states[n].effective for n in names})
        return out

    def _check(self, states: dict[str, ServerState], desired: dict[str, int], *,
               when: str) -> None:
        wrong = [f"{self._label(n)} is {states[n].describe()}, asked weight {w}"
                 for n, w in desired.items() if states[n].effective != w]
        if wrong:
            raise HaproxyStateError(f"HAProxy backend {self.options.backend} {when}: "
                                    + "; ".join(wrong))

    def _check_up(self, states: dict[str, ServerState], carriers: list[str]) -> None:
        down = [f"{self._label(n)} is {states[n].describe()}" for n in carriers
                if states[n].op_state not in _UP]
        if down:
            raise HaproxyStateError(
                f"HAProxy backend {self.options.backend}: not draining the others while "
                f"{'; '.join(down)} (HAProxy sees it down: its health check fails)")

    def _server(self, name: str) -> str:
        return f"{self.options.backend}/{name}"

    def _label(self, name: str) -> str:
        return f"{self._site_of[name]}/{name}"

    # --- the runtime API ------------------------------------------------------------------

    def _read(self) -> dict[str, ServerState]:
        be = self.options.backend
        reply = self._call(f"show servers state {be}")
        if reply.startswith("Can't find backend"):
            raise PermanentError(f"HAProxy has no backend {be!r}; it has: "
                                 f"{', '.join(self._backends()) or 'none'}")
        lines = reply.splitlines()
        header = next((ln[2:].split() for ln in lines if ln.startswith("# ")), None)
        if not lines or lines[0].strip() != "1" or header is None:
            raise HaproxyStateError(f"unexpected answer from {self.options.socket} to "
                                    f"'show servers state {be}': {reply[:200]!r}")
        states: dict[str, ServerState] = {}
        for line in lines[1:]:
            if not line.strip() or line.startswith("#"):
                continue
            row = dict(zip(header, line.split(), strict=False))
            if row.get("be_name") != be:
                continue
            states[row["srv_name"]] = ServerState(
                row["srv_name"], int(row["srv_op_state"]), int(row["srv_admin_state"]),
                int(row["srv_uweight"]))
        missing = [n for n in self._site_of if n not in states]
        if missing:
            raise PermanentError(
                f"HAProxy backend {be!r} has no server {', '.join(missing)}; it has: "
                f"{', '.join(sorted(states)) or 'none'} (fix options.servers)")
        return states

    def _backends(self) -> list[str]:
        reply = self._call("show backend")
        return [ln.strip() for ln in reply.splitlines() if ln.strip() and not ln.startswith("#")]

    def _send(self, commands: list[str]) -> None:
        """Several `set` commands in one round trip; a good reply is blank lines only.
        The one place this backend writes: the fence is checked right before."""
        fencing.check()
        reply = self._call("; ".join(commands))
        if reply.strip():
            text = " ".join(reply.split())
            if "Permission denied" in reply:
                raise PermanentError(f"HAProxy admin socket {self.options.socket} refused "
                                     f"the change ({text}); give it `level admin`")
            if "No such" in reply or "Can't find" in reply or "Unknown command" in reply:
                raise PermanentError(f"HAProxy refused {'; '.join(commands)!r}: {text}")
            raise HaproxyStateError(f"HAProxy refused {'; '.join(commands)!r}: {text}")

    def _call(self, line: str) -> str:
        where = self.options.socket
        family = socket.AF_UNIX if isinstance(self._address, str) else socket.AF_INET6 if (
            ":" in self._address[0]) else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.options.timeout)
                sock.connect(self._address)
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except PermissionError:
            raise PermanentError(f"HAProxy admin socket {where}: permission denied; run the "
                                 "controller as a user the socket's mode/user/group "
                                 "allows") from None
        except FileNotFoundError:
            raise ConnectionError(f"HAProxy admin socket {where} does not exist: is haproxy "
                                  f"running with `stats socket {where} level admin`?") from None
        except TimeoutError:
            raise TimeoutError(f"HAProxy admin socket {where}: no answer within "
                               f"{self.options.timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"HAProxy admin socket {where}: "
                                  f"{exc.strerror or exc}") from None
        return b"".join(chunks).decode(errors="replace")

    # --- observing the split --------------------------------------------------------------

    def observe(self) -> Evidence:
        """Send `observe.requests` requests through the frontend; count who answered."""
        obs = self.options.observe
        assert obs is not None
        parts = urlsplit(obs.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else (
            http.client.HTTPConnection)
        counts: dict[str, int] = {}
        errors: list[str] = []
        conn = conn_cls(parts.hostname or "", parts.port, timeout=obs.timeout)
        in_a_row = 0
        try:
            for _ in range(obs.requests):
                if in_a_row >= 3:  # the frontend is not answering: evidence, not a wait
                    errors.append("gave up after 3 errors in a row")
                    break
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(type(exc).__name__)
                    in_a_row += 1
                    conn.close()
                    continue
                if response.status >= 500:
                    errors.append(f"HTTP {response.status}")
                    in_a_row += 1
                    continue
                in_a_row = 0
                who = response.getheader(obs.header) or "(no header)"
                who = self._site_of.get(who, who)
                counts[who] = counts.get(who, 0) + 1
        finally:
            conn.close()
        answered = sum(counts.values())
        return {"requests": obs.requests, "bySite": counts, "errors": len(errors),
                "errorKinds": sorted(set(errors)),
                "share": {k: round(100.0 * v / answered, 1) for k, v in counts.items()}
                if answered else {}}

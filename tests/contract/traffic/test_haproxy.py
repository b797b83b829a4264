"""The HAProxy traffic backend against a real haproxy: what the shared contract cannot say.

The must-show test: a steady stream of requests (kept-alive and new connections) through
haproxy while the backend shifts; every request sent after the shift returned is
answered by the backup and not one request fails. Then: maintenance and drain, the
target-first rule when the target is down, sites whose servers disagree, the observed
split, servers in drain or maintenance that a revert puts back exactly as they were, and
the errors an operator meets (unknown backend or server, a socket that is
wrong, not admin, or whose haproxy is gone, a missing haproxy binary, bad options).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller import registry
from controller.drill.servers import haproxy as launcher
from controller.drill.servers.base import ServerError, free_port
from controller.drill.servers.haproxy import HEADER, HaproxyServers
from controller.model import PermanentError
from controller.secrets import Secrets
from controller.traffic.haproxy import HaproxyOptions, HaproxyStateError
from tests.contract.traffic.steps import TrafficStep

ORIGINAL = {"primary": 100, "backup": 0}
CUTOVER = {"backup": 100, "primary": 0}


def build(edge: HaproxyServers, **options: Any) -> Any:
    return registry.build("traffic", "haproxy", {**edge.options(), **options},
                          secrets=Secrets())


def server_row(edge: HaproxyServers, server: str) -> dict[str, str]:
    lines = edge.command(f"show servers state {edge.backend}").splitlines()
    header = next(ln[2:].split() for ln in lines if ln.startswith("# "))
    rows = [dict(zip(header, ln.split(), strict=False)) for ln in lines[2:] if ln.strip()]
    return next(r for r in rows if r["srv_name"] == server)


# --- the must-show test: no request lost, none served by the old site after the switch ---


@dataclass(frozen=True)
class Answer:
    mode: str  # "keep-alive" | "new connection"
    sent: float  # time.monotonic() just before the request was sent
    answered: float  # time.monotonic() once its answer was read (or it failed)
    site: str | None
    status: int | None
    error: str | None


class Stream:
    """Two client threads sending GET / through haproxy back to back: one over a single
    kept-alive connection, one opening a new connection for every request."""

    def __init__(self, port: int):
        self.port = port
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(mode,), daemon=True)
                        for mode in ("keep-alive", "new connection")]

    def _run(self, mode: str) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            sent = time.monotonic()
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                self.answers.append(Answer(mode, sent, time.monotonic(),
                                           response.getheader(HEADER), response.status, None))
            except (OSError, http.client.HTTPException) as exc:
                self.answers.append(Answer(mode, sent, time.monotonic(), None, None, repr(exc)))
                conn.close()
                conn = None
            if mode == "new connection" and conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def wait_for(self, count: int, after: float = 0.0) -> None:
        """Block until `count` answers to requests sent after `after` (a monotonic time)."""
        for _ in range(20_000):
            if sum(a.sent > after for a in list(self.answers)) >= count:
                return
            time.sleep(0.001)
        raise AssertionError(f"the stream got fewer than {count} answers: "
                             f"{len(self.answers)} in all")

    def __enter__(self) -> Stream:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_switch_under_a_steady_stream_loses_nothing_and_ends_on_the_backup(
        edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy)
    with Stream(edge_haproxy.port) as stream:
        stream.wait_for(100)
        commanded = time.monotonic()
        evidence = backend.shift(to="backup", weights=CUTOVER)
        acknowledged = time.monotonic()
        stream.wait_for(1000, after=acknowledged)
        reverted = time.monotonic()
        backend.revert(to=evidence["before"])  # and back again, under the same stream
        back = time.monotonic()
        stream.wait_for(300, after=back)
    answers = list(stream.answers)
    failed = [a for a in answers if a.error or (a.status or 0) >= 500]
    during = [a for a in answers if commanded <= a.sent <= acknowledged]
    # sent after the shift returned and answered before the revert began: a request
    # still in flight when the revert starts may rightly reach the primary again
    after = [a for a in answers if a.sent > acknowledged and a.answered < reverted]
    after_back = [a for a in answers if a.sent > back]
    counts = {site: sum(a.site == site for a in answers) for site in ("primary", "backup")}
    print(f"\nstream through haproxy: {len(answers)} requests "
          f"({sum(a.mode == 'new connection' for a in answers)} on new connections): "
          f"primary {counts['primary']}, backup {counts['backup']}, errors {len(failed)}; "
          f"sent while the shift ran: {len(during)} "
          f"({sum(a.site == 'backup' for a in during)} answered by backup); sent after it "
          f"returned: {len(after)}, {sum(a.site == 'backup' for a in after)} answered by "
          f"backup; after the revert returned: {len(after_back)}, "
          f"{sum(a.site == 'primary' for a in after_back)} answered by primary")
    assert evidence["before"] == ORIGINAL and evidence["after"] == {"primary": 0, "backup": 100}
    assert evidence["commands"] == ["set server be_app/web2 weight 100",
                                    "set server be_app/web1 weight 0"]  # target first
    assert failed == []
    assert len(after) >= 1000
    stray = [a for a in after if a.site != "backup"]
    assert stray == [], [f"{a.mode}: sent {a.sent - acknowledged:+.4f} s and answered "
                         f"{a.answered - acknowledged:+.4f} s after the shift returned, by "
                         f"{a.site}" for a in stray]
    assert {a.mode for a in after} == {"keep-alive", "new connection"}
    assert len(after_back) >= 300 and {a.site for a in after_back} == {"primary"}


# --- states, order, read-back ------------------------------------------------------------


def test_a_backup_in_maintenance_with_weight_0_is_enabled_with_its_weight(
        edge_haproxy: HaproxyServers) -> None:
    """`state ready` alone would leave it at weight 0: the backend sets the weight too."""
    edge_haproxy.command("set server be_app/web2 state maint")
    backend = build(edge_haproxy)
    assert backend.current() == ORIGINAL
    evidence = backend.shift(to="backup", weights=CUTOVER)
    assert evidence["commands"] == ["set server be_app/web2 weight 100",
                                    "set server be_app/web2 state ready",
                                    "set server be_app/web1 weight 0"]
    row = server_row(edge_haproxy, "web2")
    assert (row["srv_admin_state"], row["srv_uweight"]) == ("0", "100")
    backend.revert(to=evidence["before"])
    assert backend.current() == ORIGINAL


def test_a_drained_site_reads_0_and_is_brought_back_with_its_weight(
        edge_haproxy: HaproxyServers) -> None:
    edge_haproxy.command("set server be_app/web1 state drain")
    backend = build(edge_haproxy)
    assert backend.current() == {"primary": 0, "backup": 0}
    backend.revert(to=ORIGINAL)
    row = server_row(edge_haproxy, "web1")
    assert (row["srv_admin_state"], row["srv_uweight"]) == ("0", "100")


def test_a_target_haproxy_sees_down_is_not_drained_to(edge_haproxy: HaproxyServers) -> None:
    edge_haproxy.command("set server be_app/web2 health down")
    backend = build(edge_haproxy)
    down = r"not draining the others while backup/web2 is ready weight 100 DOWN"
    with pytest.raises(HaproxyStateError, match=down):
        backend.shift(to="backup", weights=CUTOVER)
    assert backend.current() == {"primary": 100, "backup": 100}  # the source still serves
    assert not isinstance(HaproxyStateError("x"), PermanentError)  # retried by the executor
    with pytest.raises(HaproxyStateError, match=down):  # a retry finds the target enabled
        backend.shift(to="backup", weights=CUTOVER)
    assert backend.current()["primary"] == 100
    edge_haproxy.command("set server be_app/web2 health up")
    assert backend.shift(to="backup", weights=CUTOVER)["commands"] == [
        "set server be_app/web1 weight 0"]


def test_servers_of_one_site_that_disagree_are_reported_and_restored_one_by_one(
        edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy, servers={"pool": ["web1", "web2"]})
    original = backend.current()
    assert original == {"pool/web1": 100, "pool/web2": 0}
    backend.shift(to="pool", weights={"pool": 50})
    assert backend.current() == {"pool": 50}
    backend.revert(to=original)
    assert backend.current() == original


def test_observe_counts_the_split_served_after_the_change(
        edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy, observe={"url": edge_haproxy.url(), "requests": 40})
    evidence = backend.shift(to="backup", weights={"backup": 50, "primary": 50})
    observed = evidence["observed"]
    assert observed["errors"] == 0 and sum(observed["bySite"].values()) == 40
    assert 30 <= observed["share"]["backup"] <= 70
    evidence = backend.shift(to="backup", weights=CUTOVER)
    assert evidence["observed"]["bySite"] == {"backup": 40}


def test_observe_reports_a_frontend_that_does_not_answer(
        edge_haproxy: HaproxyServers) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    evidence = build(edge_haproxy, observe={"url": url, "requests": 50}).shift(
        to="backup", weights=CUTOVER)
    assert evidence["after"] == {"primary": 0, "backup": 100}  # the change stands
    assert evidence["observed"]["bySite"] == {}
    assert evidence["observed"]["errorKinds"] == ["ConnectionRefusedError",
                                                  "gave up after 3 errors in a row"]


# --- errors an operator meets ----------------------------------------------------------


def test_unknown_backend_is_permanent_and_lists_the_backends(
        edge_haproxy: HaproxyServers) -> None:
    with pytest.raises(PermanentError, match="HAProxy has no backend 'be_web'; it has: be_app"):
        build(edge_haproxy, backend="be_web").current()


def test_unknown_server_is_permanent_and_lists_the_servers(
        edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy, servers={"primary": ["web1"], "backup": ["web9"]})
    with pytest.raises(PermanentError, match=r"has no server web9; it has: web1, web2 "
                                             r"\(fix options.servers\)"):
        backend.shift(to="backup", weights=CUTOVER)
    assert build(edge_haproxy).current() == ORIGINAL


def test_a_weight_haproxy_cannot_take_is_permanent(edge_haproxy: HaproxyServers) -> None:
    with pytest.raises(PermanentError, match="from 0 to 256"):
        build(edge_haproxy).shift(to="backup", weights={"backup": 300, "primary": 0})
    assert build(edge_haproxy).current() == ORIGINAL


def test_a_socket_without_admin_level_is_permanent(edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy, socket=str(edge_haproxy.operator_socket))
    assert backend.current() == ORIGINAL  # reading is allowed
    with pytest.raises(PermanentError, match=f"{edge_haproxy.operator_socket} refused the "
                                             r"change \(Permission denied\); give it "
                                             "`level admin`"):
        backend.shift(to="backup", weights=CUTOVER)
    assert build(edge_haproxy).current() == ORIGINAL


def test_a_wrong_socket_path_is_named(edge_haproxy: HaproxyServers, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sock"
    with pytest.raises(ConnectionError, match=f"HAProxy admin socket {missing} does not "
                                              "exist: is haproxy running"):
        build(edge_haproxy, socket=str(missing)).current()
    stale = tmp_path / "stale.sock"  # a socket file nothing listens on any more
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    with pytest.raises(ConnectionError, match=f"HAProxy admin socket {stale}: "
                                              "Connection refused"):
        build(edge_haproxy, socket=str(stale)).shift(to="backup", weights=CUTOVER)
    port = free_port()
    with pytest.raises(ConnectionError, match=f"HAProxy admin socket 127.0.0.1:{port}: "
                                              "Connection refused"):
        build(edge_haproxy, socket=f"127.0.0.1:{port}").current()


def test_a_stopped_haproxy_is_a_connection_error_naming_the_socket(tmp_path: Path) -> None:
    with HaproxyServers(base=tmp_path / "edge") as edge:
        backend = build(edge)
        assert backend.current() == ORIGINAL
        sock = edge.socket
    with pytest.raises(ConnectionError, match=f"HAProxy admin socket {sock}"):
        backend.current()


def test_a_missing_haproxy_binary_is_named_with_the_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(launcher, "HAPROXY", tmp_path / "sbin/haproxy")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match=r"sbin/haproxy not found: apt-get install .*haproxy"):
        HaproxyServers(base=tmp_path / "edge").start()


@pytest.mark.parametrize(("options", "message"), [
    ({"socket": "haproxy-admin"}, "give a unix socket path such as /run/haproxy/admin.sock "
                                  "or host:port"),
    ({"socket": "127.0.0.1:99999"}, "give a unix socket path"),
    ({"servers": {"dc-a": ["web1"], "dc-b": ["web1"]}},
     "'web1' is listed under both 'dc-a' and 'dc-b'; a server belongs to one site"),
    ({"servers": {"dc-a": ["web1"], "dc-b": []}}, "servers.dc-b: list at least one"),
    ({"servers": {}}, "at least 1 item"),
    ({"observe": {"url": "ftp://x"}}, "give an http:// or https:// URL"),
    ({"weights": {"dc-a": 1}}, "Extra inputs are not permitted"),
])
def test_options_name_the_field_and_the_fix(options: dict[str, Any], message: str) -> None:
    base = {"socket": "/run/haproxy/admin.sock", "backend": "be_app",
            "servers": {"dc-a": ["web1"], "dc-b": ["web2"]}}
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HaproxyOptions.model_validate({**base, **options})


def test_servers_in_drain_and_maint_are_back_in_drain_and_maint_after_a_revert(
        tmp_path: Path) -> None:
    """A standby kept in maintenance and one in drain come back as they were, each with
    its own weight — not `ready` with weight 0."""
    with HaproxyServers(base=tmp_path / "edge") as edge:
        be = edge.backend
        port = edge.sites["backup"].port
        assert "New server registered" in edge.command(  # a dynamic server starts in maint
            f"add server {be}/web3 127.0.0.1:{port} weight 50")
        edge.command(f"set server {be}/web2 weight 100; set server {be}/web2 state drain")
        backend = build(edge, servers={"primary": ["web1"], "backup": ["web2", "web3"]})
        step = TrafficStep.over(backend, primary="primary", backup="backup",
                                weights=CUTOVER)

        prepared = step.prepare()
        assert prepared["before"] == ORIGINAL
        servers = prepared["snapshot"]["servers"]
        assert {n: (s["admin"], s["weight"]) for n, s in servers.items()} == {
            "web1": ("ready", 100), "web2": ("drain", 100), "web3": ("maint", 50)}

        evidence = step.perform(prepared)
        assert backend.current() == {"primary": 0, "backup": 100}
        assert {n: (server_row(edge, n)["srv_admin_state"], server_row(edge, n)["srv_uweight"])
                for n in ("web2", "web3")} == {"web2": ("0", "100"), "web3": ("0", "100")}

        back = step.revert(evidence)

        rows = {n: server_row(edge, n) for n in ("web1", "web2", "web3")}
        assert {n: (r["srv_admin_state"], r["srv_uweight"]) for n, r in rows.items()} == {
            "web1": ("0", "100"), "web2": ("8", "100"), "web3": ("1", "50")}
        assert backend.current() == ORIGINAL
        assert back["commands"] == [  # primary back first; the standbys held, then weighted
            f"set server {be}/web1 weight 100", f"set server {be}/web2 state drain",
            f"set server {be}/web3 state maint", f"set server {be}/web3 weight 50"]
        again = backend.revert(to=prepared["before"], snapshot=prepared["snapshot"])
        assert again["commands"] == []  # idempotent


def test_a_snapshot_that_was_edited_is_refused_before_any_write(
        edge_haproxy: HaproxyServers) -> None:
    backend = build(edge_haproxy)
    backend.shift(to="backup", weights=CUTOVER)
    with pytest.raises(PermanentError, match=r"saved HAProxy state of server 'web2' is not "
                                             r"\{admin: ready\|drain\|maint"):
        backend.revert(to=ORIGINAL, snapshot={"weights": ORIGINAL, "servers": {
            "web2": {"admin": "offline", "weight": 0}}})
    assert backend.current() == {"primary": 0, "backup": 100}

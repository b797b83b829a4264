"""Dependency faults against the real servers: each run goes through the Engine (request,
approval by the requester, executor with tenacity retries) on a plan whose backend is
configured as the contract tests configure it, and must end in a named, recorded state:

- bounded retries (the step record's `attempts` is exactly the plan's bound, or 1 for
  an error that retrying cannot fix);
- the step FAILED and the run Failed with the reason, the error naming the dependency;
- a notice of the failed run (sent and audited), the restorer's own audit for restores;
- never a hang (every step is bounded by its timeout) and never a change without a record.

Faults that the controller is expected to ride out (S3 throttling, a 409 from a
concurrent edit) must end with the step SUCCEEDED and the fault visibly met.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from controller import testing
from controller.backends import Backends
from controller.drill.servers.bind import BindServers
from controller.drill.servers.haproxy import HaproxyServers
from controller.drill.servers.kube import KubeServers
from controller.drill.servers.sshd import SshServer
from controller.journal import Journal, Run
from controller.loop import Engine
from controller.model import Phase, Record, StepRecord, StepStatus
from controller.plan import FailoverPlan
from controller.traffic.istio import IstioTrafficBackend
from tests.contract.dns.conftest import bind_writer
from tests.contract.traffic.test_mesh import ISTIO, RacingKube
from tests.reliability.conftest import TALLY
from tests.reliability.faults import S3Throttle, Silent, TcpProxy
from tests.reliability.sandbox import ROWS, Backups, make_plan, stop_restored

ZONE = "example.test."
_N = iter(range(10_000))


# --- running one step through the engine --------------------------------------------------


@dataclass
class Outcome:
    run: Run
    rec: StepRecord
    audit: list[dict[str, Any]]
    notices: list[dict[str, Any]]
    journal: Journal

    @property
    def error(self) -> str:
        return self.rec.error or ""


def run_step(tmp_path: Path, plan: FailoverPlan, *,
             prepared: Callable[[], None] | None = None,
             built: dict[str, Any] | None = None) -> Outcome:
    """Request a failover, let the engine run it to its end; `prepared` runs once the
    step's original state is in the journal (the fault hits between read and change)."""
    journal = Journal(tmp_path / f"{plan.name}.db")
    backends = Backends(plan, audit=partial(journal.audit, plan=plan.name))
    backends._built.update(built or {})  # a client we instrument, else built from options
    fired: list[bool] = []

    def listener(_: str) -> None:
        run = journal.active_run(plan.name)
        if prepared is None or fired or run is None:
            return
        rec = journal.steps(run.id)[0]
        if rec.status is StepStatus.RUNNING and "prepared" in rec.evidence:
            fired.append(True)
            prepared()

    journal.listeners.append(listener)
    engine = Engine(plan, journal, backends=backends, holder="reliability", backoff=0.05)
    engine.request("failover", actor="reliability", reason="dependency fault injected")
    engine.reconcile()
    [run] = journal.runs(plan.name)
    [rec] = journal.steps(run.id)
    notices = testing.FakeNotifier(testing.FakeNotifier.Options(key=f"im-{plan.name}")).sent()
    return Outcome(run, rec, journal.audit_trail(run_id=run.id), notices, journal)


def assert_failed(out: Outcome, *, attempts: int, names: list[str]) -> None:
    """Bounded retries, then a named failed state with the reason and a notice."""
    assert out.rec.status is StepStatus.FAILED, out.rec
    assert out.rec.attempts == attempts, (out.rec.attempts, out.error)
    for name in names:
        assert name in out.error, (name, out.error)
    assert out.run.phase is Phase.FAILED and out.run.finished_at is not None
    assert out.run.outcome and out.run.outcome.startswith(f"step {out.rec.name} failed: ")
    assert out.error in out.run.outcome
    failed = [n for n in out.notices if "FAILED" in n["status"]]
    assert failed and names[0] in failed[-1]["status"], out.notices
    actions = [a["action"] for a in out.audit]
    assert actions[0] == "start-failover" and "notify" in actions, actions


@pytest.fixture
def fault() -> Iterator[None]:
    TALLY["fault_tried"] += 1
    yield
    TALLY["fault_survived"] += 1  # only reached when the test's assertions held


# --- DNS: BIND primary down or silent, one secondary lagging --------------------------------


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServers]:
    with BindServers(zone=ZONE, secondaries=2,
                     records=["www IN A 192.0.2.10"]) as servers:
        yield servers


def dns_plan(bind: BindServers, name: str, record: str, **step: Any) -> FailoverPlan:
    options = {"zone": ZONE, "server": bind.primary.address, "port": bind.primary.port,
               "tsig": {"name": bind.key_name, "secret": {"fromFile": str(bind.key_file)}},
               "nameservers": [{"address": s.address, "port": s.port, "name": s.name}
                               for s in bind.servers],
               "timeout": "1s", "verifyTimeout": "1s"}
    return make_plan(name, [{"name": "zone", "role": "dns", "kind": "rfc2136",
                             "options": options}],
                     {"name": "dns-cutover", "action": "dns", "backend": "zone",
                      "timeout": "30s", "retries": 2,
                      "params": {"records": [{"name": record, "type": "A", "ttl": 60,
                                              "values": ["198.51.100.10"]}]}, **step})


def test_dns_primary_down(tmp_path: Path, fault: None) -> None:
    with BindServers(zone=ZONE, secondaries=1, base=tmp_path / "bind") as bind:
        plan = dns_plan(bind, "dns-down", f"www.{ZONE}")
        primary = bind.primary.proc
        assert primary is not None
        primary.send_signal(signal.SIGTERM)  # named stopped by its PID
        primary.wait(10)
        out = run_step(tmp_path, plan)
    assert_failed(out, attempts=3, names=[f"primary 127.0.0.1:{bind.primary.port} unreachable"])
    assert "prepared" in out.rec.evidence and "before" not in out.rec.evidence  # nothing read


def test_dns_primary_silent(tmp_path: Path, bind: BindServers, fault: None) -> None:
    plan = dns_plan(bind, "dns-silent", f"www.{ZONE}")
    bind.pause("ns1")  # SIGSTOP: the kernel takes the connection, named never answers
    try:
        out = run_step(tmp_path, plan)
    finally:
        bind.resume("ns1")
    assert_failed(out, attempts=3, names=[f"primary 127.0.0.1:{bind.primary.port} did not "
                                          "answer", "within 1 s"])
    assert bind_served(bind, "ns1", f"www.{ZONE}") == ["192.0.2.10"]  # nothing changed


def bind_served(bind: BindServers, server: str, name: str) -> list[str]:
    import dns.message
    import dns.query

    s = bind.server(server)
    answer = dns.query.udp(dns.message.make_query(name, "A"), s.address, port=s.port,
                           timeout=2)
    return sorted(r.to_text() for rrset in answer.answer for r in rrset)


def test_dns_secondary_lagging(tmp_path: Path, bind: BindServers, fault: None) -> None:
    name = f"lag-{next(_N)}.{ZONE}"
    bind_writer(bind)(Record(name, "A", 60, ("192.0.2.10",)))
    plan = dns_plan(bind, "dns-lag", name, onFailure="revert")
    bind.pause("ns3")  # a secondary that stops taking NOTIFYs and answering
    try:
        out = run_step(tmp_path, plan)
    finally:
        bind.resume("ns3")
    assert_failed(out, attempts=3, names=["ns3", "update applied on the primary"])
    assert "ns2" not in out.error.split("by:")[1]  # only the lagging server is named
    # the half-applied change is on record, and so is the attempt to take it back
    assert out.rec.evidence["before"] == [Record(name, "A", 60, ("192.0.2.10",)).to_json()]
    assert "ns3" in out.rec.evidence["revertError"]
    assert "reverted: nothing" in (out.run.outcome or "")
    assert bind_served(bind, "ns1", name) == ["192.0.2.10"]  # the primary was put back


# --- HAProxy: the admin socket disappears mid-step -----------------------------------------


def test_haproxy_socket_gone_mid_run(tmp_path: Path, fault: None) -> None:
    edge = HaproxyServers(base=tmp_path / "haproxy").start()
    try:
        socket_path = str(edge.socket)
        plan = make_plan("edge-gone", [{"name": "edge", "role": "traffic", "kind": "haproxy",
                                        "options": {**edge.options(), "servers": {
                                            "dc-a": ["web1"], "dc-b": ["web2"]}}}],
                         {"name": "redirect-traffic", "action": "traffic", "backend": "edge",
                          "timeout": "30s", "retries": 2, "onFailure": "revert",
                          "params": {"to": "dc-b", "weights": {"dc-b": 100, "dc-a": 0}}})
        out = run_step(tmp_path, plan, prepared=edge.stop)  # haproxy stopped by its PID
    finally:
        edge.stop()
    assert_failed(out, attempts=3, names=[socket_path])
    assert out.rec.evidence["before"] == {"dc-a": 100, "dc-b": 0}  # the original, saved
    assert socket_path in out.rec.evidence["revertError"]


# --- S3 (moto) throttling or failing, SSH refused or hanging, PostgreSQL failing mid-restore --


def test_s3_throttling_is_ridden_out(tmp_path: Path, backups: Backups, fault: None) -> None:
    proxy = S3Throttle(backups.moto.endpoint, fail=2, status=503)
    plan, path, options = backups.plan("s3-throttled", endpoint=proxy.endpoint)
    try:
        out = run_step(tmp_path, plan)
    finally:
        proxy.stop()
        stop_restored(path, options)
    assert proxy.failed == 2 and proxy.passed > 0  # throttled twice, then served
    assert out.rec.status is StepStatus.SUCCEEDED, out.error
    assert out.rec.attempts == 1  # botocore's bounded retries absorbed the SlowDowns
    assert out.rec.evidence["validation"][0]["value"] == str(ROWS)
    assert out.run.phase is Phase.FAILED_OVER


def test_s3_errors_fail_the_restore_after_bounded_retries(tmp_path: Path, backups: Backups,
                                                          fault: None) -> None:
    proxy = S3Throttle(backups.moto.endpoint, fail=10**6, status=500)
    plan, path, _ = backups.plan("s3-errors", endpoint=proxy.endpoint)
    try:
        out = run_step(tmp_path, plan)
    finally:
        proxy.stop()
    assert_failed(out, attempts=2, names=["InternalError", "ListObjectsV2"])
    # bounded at both levels: 2 step attempts x 5 tries each (botocore: 1 + 4 retries)
    assert proxy.passed == 0 and proxy.failed == 2 * 5
    assert not Path(path).exists()  # nothing was written to the target


def test_ssh_refused(tmp_path: Path, backups: Backups, fault: None) -> None:
    gone = SshServer(tmp_path / "sshd-gone").start()
    port = gone.port
    gone.stop()  # a real sshd, stopped by its PID: the port now refuses
    plan, path, _ = backups.plan("ssh-refused", host="127.0.0.1", ssh=backups.ssh(),
                                 sshPort=port)
    out = run_step(tmp_path, plan)
    assert_failed(out, attempts=2, names=[f"{backups.sshd.user}@127.0.0.1:{port}",
                                          "cannot connect over SSH"])
    restores = [a for a in out.journal.audit_trail() if a["action"] == "restore"]
    assert len(restores) == 4 and "FAILED restoring" in restores[-1]["detail"]
    assert not Path(path).exists()


def test_ssh_hanging(tmp_path: Path, backups: Backups, fault: None) -> None:
    silent = Silent()  # accepts the TCP connection, never sends the SSH banner
    try:
        plan, path, _ = backups.plan("ssh-hang", host="127.0.0.1", ssh=backups.ssh(),
                                     sshPort=silent.port)
        out = run_step(tmp_path, plan)
    finally:
        silent.stop()
    assert_failed(out, attempts=2, names=[f"127.0.0.1:{silent.port}", "no SSH session"])
    assert len(silent.accepted) == 2  # one connection per attempt, each given up
    assert not Path(path).exists()


def test_postgres_dies_mid_validation(tmp_path: Path, backups: Backups, fault: None) -> None:
    plan, path, options = backups.plan("pg-dies")
    kill = {"name": "postmaster killed", "sql": "COPY (SELECT 1) TO PROGRAM "
            f"'kill -KILL $(head -1 {path}/postmaster.pid)'"}
    options["validation"].insert(0, kill)  # the restored node's postmaster dies mid-validate
    plan.spec.steps[0].params["into"]["options"] = options
    try:
        out = run_step(tmp_path, plan)
    finally:
        stop_restored(path, options)
    # a failed validation is permanent: not retried, named by phase and query
    assert_failed(out, attempts=1, names=["restore failed at validate",
                                          "orders row count"])
    detail = [a["detail"] for a in out.journal.audit_trail() if a["action"] == "restore"]
    assert any(d.startswith("FAILED restoring") and "validate" in d for d in detail), detail


# --- the Kubernetes API under the mesh backends: 409 from a concurrent edit, no answer -------


@pytest.fixture
def virtualservice(kube: KubeServers) -> Iterator[tuple[str, Any]]:
    admin, name = kube.kube("admin"), f"rel-vs-{next(_N)}"
    admin.create(ISTIO.group, ISTIO.version, kube.namespace, ISTIO.plural, {
        "apiVersion": f"{ISTIO.group}/{ISTIO.version}", "kind": ISTIO.kind,
        "metadata": {"name": name, "namespace": kube.namespace},
        "spec": copy.deepcopy(ISTIO.spec)})
    yield name, admin


def mesh_plan(kube: KubeServers, name: str, vs: str, connection: dict[str, Any]) -> FailoverPlan:
    return make_plan(name, [{"name": "mesh", "role": "traffic", "kind": "istio", "options": {
        **connection, "timeout": "2s", "namespace": kube.namespace, "name": vs,
        **copy.deepcopy(ISTIO.options)}}],
        {"name": "redirect-traffic", "action": "traffic", "backend": "mesh",
         "timeout": "60s", "retries": 2, "onFailure": "revert",
         "params": {"to": "dc-b", "weights": {"dc-b": 100, "dc-a": 0}}})


def vs_weights(admin: Any, kube: KubeServers, vs: str) -> list[int]:
    obj = admin.get(ISTIO.group, ISTIO.version, kube.namespace, ISTIO.plural, vs)
    return [d.get("weight") for d in obj["spec"]["http"][0]["route"]]


def test_api_conflict_409_is_retried_and_the_edit_kept(
        tmp_path: Path, kube: KubeServers, virtualservice: tuple[str, Any], fault: None) -> None:
    vs, admin = virtualservice
    plan = mesh_plan(kube, "mesh-409", vs, kube.connection("controller"))
    client = RacingKube.from_token(kube.url, kube.token("controller"), ca_file=str(kube.ca_file))
    client.nth = 1  # someone else writes between our read and our first write: 409

    def edit() -> None:
        admin.update(ISTIO.group, ISTIO.version, kube.namespace, ISTIO.plural, vs,
                     lambda o: ISTIO.foreign_edit(o["spec"]))

    client.race = edit
    backend = IstioTrafficBackend(IstioTrafficBackend.Options.model_validate(
        plan.spec.backend("mesh").options), kube=client)
    out = run_step(tmp_path, plan, built={"mesh": backend})
    assert client.conflicts >= 1  # the API server refused the stale write
    assert out.rec.status is StepStatus.SUCCEEDED and out.rec.attempts == 1, out.error
    assert vs_weights(admin, kube, vs) == [0, 100]
    obj = admin.get(ISTIO.group, ISTIO.version, kube.namespace, ISTIO.plural, vs)
    assert obj["spec"]["http"][1]["timeout"] == "5s"  # the concurrent edit was not lost


def test_api_server_unreachable_mid_step(
        tmp_path: Path, kube: KubeServers, virtualservice: tuple[str, Any], fault: None) -> None:
    vs, admin = virtualservice
    port = int(kube.url.rsplit(":", 1)[1])
    proxy = TcpProxy(("127.0.0.1", port))
    try:
        plan = mesh_plan(kube, "mesh-gone", vs, {**kube.connection("controller"),
                                                  "host": proxy.url})
        out = run_step(tmp_path, plan, prepared=proxy.cut)  # the API server goes away
    finally:
        proxy.stop()
    assert_failed(out, attempts=3, names=[f"no answer from {proxy.url}",
                                          f"virtualservices.networking.istio.io "
                                          f"{kube.namespace}/{vs}"])
    assert out.rec.evidence["before"] == {"dc-a": 100, "dc-b": 0}
    assert "no answer" in out.rec.evidence["revertError"]
    assert vs_weights(admin, kube, vs) == [100, 0]  # nothing half-applied


def test_watch_from_a_too_old_resource_version_is_gone_410(kube: KubeServers,
                                                         fault: None) -> None:
    """The operator's watch relists on 410; the client names the cause and the fix."""
    from controller.crd import GROUP, PLURAL, VERSION
    from controller.kube import Gone

    client = kube.kube("controller")
    listed = client.list(GROUP, VERSION, kube.namespace, PLURAL)
    with pytest.raises(Gone) as err:
        for _ in client.watch(GROUP, VERSION, kube.namespace, PLURAL, resource_version="1",
                              timeout_seconds=5):
            pass
    assert err.value.status == 410 and "list again" in str(err.value)
    assert listed.resource_version  # the relist gives a version to watch from

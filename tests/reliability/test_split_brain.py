"""Split brain: two operators (in-process `controller.operator.Operator`s) on one plan
against the real kube-apiserver; the leader reaches the API server through a TCP proxy
that the first test cuts right after the leader recorded the run's first step, and the
second makes drop every packet while the leader's (slow) traffic step is running.

Shown from the step records each replica's journal saved (who ran which step, when) and
from the Events: at most one replica acts at any moment — no step is run by both and the
action windows do not overlap — and the survivor finishes the run without repeating the
finished step. Then the deposed leader, its network back and still believing it leads,
is refused: its fence raises LostLease before a change, and its stale writes (the plan's
status, the Lease) carry an old resourceVersion and get 409 Conflict.

Mid-step (issue 14 item 3): the cut-off leader's step is cancelled at its renew deadline,
before its Lease can expire; it never writes the traffic weights (the fake records each
write's fencing token and holder); the survivor performs the step under a larger token;
and the old leader's status write, re-read after its 409, is refused because the stored
`status.fencingToken` is newer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller import testing
from controller.crd import GROUP, PLURAL, VERSION
from controller.drill.servers.kube import KubeServers
from controller.fencing import LostLease
from controller.journal import Journal
from controller.kube import Conflict, Fencing, Kube, LeaseLost, StaleFencingToken
from controller.loop import Engine
from controller.model import StepRecord, StepStatus
from controller.operator import LeaderConfig, Operator
from controller.plan import Step, parse_plan
from controller.steps import StepContext
from tests.e2e.test_operator import events_of, plan_body
from tests.reliability.conftest import TALLY
from tests.reliability.faults import TcpProxy


class RecordingJournal(Journal):
    """A journal that notes every step record its replica saves: (time, name, status)."""

    def __init__(self, path: Path, identity: str,
                 after_save: Callable[[StepRecord], None] | None = None):
        super().__init__(path)
        self.identity = identity
        self.saved: list[tuple[float, str, StepStatus]] = []
        self.after_save = after_save

    def save_step(self, rec: StepRecord, **kwargs: Any) -> None:
        super().save_step(rec, **kwargs)  # committed and mirrored into the status first
        self.saved.append((time.monotonic(), rec.name, rec.status))
        if self.after_save is not None:
            self.after_save(rec)

    def windows(self) -> dict[str, tuple[float, float]]:
        """step -> (first save, last save) of the steps this replica ran itself."""
        out: dict[str, tuple[float, float]] = {}
        for at, name, _ in self.saved:
            first = out.get(name, (at, at))[0]
            out[name] = (first, at)
        return out


@dataclass
class Replica:
    identity: str
    operator: Operator
    journal: RecordingJournal
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Replica:
        self.thread = threading.Thread(target=self.operator.run, args=(self.stop,),
                                       daemon=True, name=self.identity)
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)


def until(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Wait for a condition (a bound against a hang, not an assertion about time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for r in started:
        r.halt()


def test_leader_cut_off_from_the_api_server(kube: KubeServers, tmp_path: Path,
                                            replicas: list[Replica]) -> None:
    TALLY["fault_tried"] += 1
    admin, ns, name = kube.kube("admin"), kube.namespace, "split-brain"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state, traffic_delay=0.3))
    lease = f"split-brain-{time.monotonic_ns()}"
    config = LeaderConfig(lease_name=lease, lease_duration=3, renew_deadline=2,
                          retry_period=0.3)
    proxy = TcpProxy(("127.0.0.1", int(kube.url.rsplit(":", 1)[1])))
    token, ca = kube.token("controller"), str(kube.ca_file)
    kube_a = Kube.from_token(proxy.url, token, ca_file=ca, timeout=2)
    kube_b = Kube.from_token(kube.url, token, ca_file=ca, timeout=2)
    stale: dict[str, Any] = {}

    def cut_after_first_step(rec: StepRecord) -> None:
        if rec.name == "notify-incident" and rec.status is StepStatus.SUCCEEDED and not stale:
            # what the leader last saw, then the network between it and the API is gone
            stale["plan"] = admin.get(GROUP, VERSION, ns, PLURAL, name)
            stale["lease"] = admin.get_lease(ns, lease)
            proxy.cut()

    def replica(identity: str, client: Kube, hook: Any = None) -> Replica:
        journal = RecordingJournal(tmp_path / f"{identity}.db", identity, hook)
        op = Operator(client, namespace=ns, journal=journal, identity=identity,
                      leader=config, tick=0.2, resync=2, workers=2)
        replicas.append(Replica(identity, op, journal))
        return replicas[-1].start()

    try:
        a = replica("replica-a", kube_a, cut_after_first_step)
        until("replica-a leads", lambda: (got := admin.get_lease(ns, lease))
              and got.holder == "replica-a")
        until("Healthy", lambda: (admin.get(GROUP, VERSION, ns, PLURAL, name).get(
            "status") or {}).get("phase") == "Healthy")
        b = replica("replica-b", kube_b)
        testing.set_health("dc-a", False, state_file=str(state))
        done = until("FailedOver", lambda: (o := admin.get(GROUP, VERSION, ns, PLURAL, name))
                     .get("status", {}).get("phase") == "FailedOver" and o, timeout=90)
        assert stale, "the leader never finished the first step"

        # --- at most one acted at any moment ----------------------------------------------
        ran_a, ran_b = a.journal.windows(), b.journal.windows()
        assert set(ran_a) == {"notify-incident"}, a.journal.saved
        # the finished step reaches the status after the journal; on a loaded host the cut
        # can come first, and the status the next leader resumes from shows it running:
        # it runs it again (at least once, by design), never at the same time
        seen = ((stale["plan"].get("status") or {}).get("run") or {}).get("steps") or []
        again = {"notify-incident"} - {s["name"] for s in seen if s["status"] == "succeeded"}
        assert set(ran_b) == {"redirect-traffic", "dns-cutover", "link-test"} | again, \
            b.journal.saved
        assert max(end for _, end in ran_a.values()) < min(s for s, _ in ran_b.values())
        steps = {s["name"]: s for s in done["status"]["run"]["steps"]}
        assert all(s["status"] == "succeeded" for s in steps.values()), steps
        assert admin.get_lease(ns, lease).holder == "replica-b"  # type: ignore[union-attr]
        succeeded = [e["message"] for e in events_of(kube, name)
                     if e["reason"] == "StepSucceeded"]
        assert len(set(succeeded)) == 4 and len(succeeded) <= 4 + len(again), succeeded
        sent = testing.FakeNotifier(testing.FakeNotifier.Options(
            key=f"{name}-im", stateFile=str(state))).sent()
        assert len([m for m in sent if "failing over to dc-b" in m["status"]]) == \
            1 + len(again)

        # --- the deposed leader's late writes are refused -----------------------------------
        proxy.resume()  # its network is back; it still thinks it leads (a long GC pause)
        a.halt()
        elector = a.operator.elector
        elector._stopping = False  # as if it had never stopped: it believes it leads
        elector._renewed = time.monotonic()
        with pytest.raises(LostLease, match="held by replica-b, not replica-a"):
            elector.fence()
        # through the engine: the fence stops it before the change, the world is untouched
        plan = parse_plan(plan_body(name, state))
        engine = Engine(plan, a.journal, holder="replica-a", fence=elector.fence)
        edge = testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
            key=f"{name}-edge", stateFile=str(state)))
        weights, calls = edge.current(), edge.calls()
        step = Step.model_validate({"name": "late-shift", "action": "traffic",
                                    "backend": "edge", "params": {"to": "dc-a"}})
        rec = StepRecord(run_id="late", name="late-shift", action="traffic", index=0)
        ctx = StepContext(plan=plan, run_id="late", level=None, backends=engine.backends,
                          lookup_evidence=lambda r, s: {})
        elector._renewed = time.monotonic()
        with pytest.raises(LostLease):
            engine.executor.execute(step, rec, ctx, detected_at=time.time())
        assert edge.current() == weights and edge.calls() == calls
        assert rec.attempts == 0 and rec.started_at is None
        # compare-and-swap: a write based on what it saw before the cut gets 409
        old = stale["plan"]
        with pytest.raises(Conflict, match="409"):
            kube_a.replace_status(GROUP, VERSION, ns, PLURAL, {
                **old, "status": {**(old.get("status") or {}), "phase": "Healthy"}})
        with pytest.raises(LeaseLost, match="now held by replica-b"):
            kube_a.renew_lease(stale["lease"])
        assert admin.get(GROUP, VERSION, ns, PLURAL, name)["status"]["phase"] == "FailedOver"
    finally:
        proxy.stop()
        for r in replicas:
            r.halt()
        admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})
        kube.request("DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{name}")
    TALLY["fault_survived"] += 1


def refusals(elector: Any, out: list[float]) -> None:
    """Note the wall-clock time of every LostLease the replica's fence raises (the engine
    is built with `fence=elector.fence` when it first leads: install before start)."""
    fence = elector.fence

    def recorded() -> None:
        try:
            fence()
        except LostLease:
            out.append(time.time())
            raise

    elector.fence = recorded


def step_of(obj: dict[str, Any], step: str) -> dict[str, Any]:
    run = (obj.get("status") or {}).get("run") or {}
    return next((s for s in run.get("steps", []) if s["name"] == step), {})


def test_a_leader_cut_off_mid_step_stops_before_its_lease_expires_and_is_fenced_out(
        kube: KubeServers, tmp_path: Path, replicas: list[Replica]) -> None:
    """Issue 14 item 3. The leader's traffic step takes 6 s; the network between the
    leader and the API server starts dropping packets while it runs. The leader stops
    believing it leads at its renew deadline, its running step is cancelled then — before
    its Lease could expire, so before anyone else may act — and it never writes the
    traffic weights. The other replica takes the Lease with a larger fencing token and
    performs the step. When the old leader's network comes back it stays a follower, and
    a status write it makes still believing it leads (a long pause) is refused on its
    409 re-read: the status keeps the new leader's token and run."""
    TALLY["fault_tried"] += 1
    admin, ns, name = kube.kube("admin"), kube.namespace, "deposed-mid-step"
    state = tmp_path / "world.json"
    admin.create(GROUP, VERSION, ns, PLURAL, plan_body(name, state, traffic_delay=6.0))
    lease = f"deposed-{time.monotonic_ns()}"
    config = LeaderConfig(lease_name=lease, lease_duration=3, renew_deadline=2,
                          retry_period=0.3)
    proxy = TcpProxy(("127.0.0.1", int(kube.url.rsplit(":", 1)[1])))
    token, ca = kube.token("controller"), str(kube.ca_file)
    kube_a = Kube.from_token(proxy.url, token, ca_file=ca, timeout=2)
    kube_b = Kube.from_token(kube.url, token, ca_file=ca, timeout=2)
    edge = testing.FakeTrafficBackend(testing.FakeTrafficBackend.Options(
        key=f"{name}-edge", stateFile=str(state)))
    get = lambda: admin.get(GROUP, VERSION, ns, PLURAL, name)  # noqa: E731
    lost_a: list[float] = []

    def replica(identity: str, client: Kube) -> Replica:
        journal = RecordingJournal(tmp_path / f"{identity}.db", identity)
        op = Operator(client, namespace=ns, journal=journal, identity=identity,
                      leader=config, tick=0.2, resync=2, workers=2)
        if identity == "replica-a":
            refusals(op.elector, lost_a)
        replicas.append(Replica(identity, op, journal))
        return replicas[-1].start()

    try:
        a = replica("replica-a", kube_a)
        until("replica-a leads", lambda: (got := admin.get_lease(ns, lease))
              and got.holder == "replica-a")
        until("Healthy", lambda: (get().get("status") or {}).get("phase") == "Healthy")
        replica("replica-b", kube_b)
        testing.set_health("dc-a", False, state_file=str(state))
        # the leader saved the original weights and counted its attempt at the shift: its
        # work is inside the 6 s it takes
        until("redirect-traffic performing", lambda: (rec := step_of(get(), "redirect-traffic"))
              and "prepared" in rec.get("evidence", {}) and rec.get("attempts", 0) >= 1,
              timeout=30)
        time.sleep(0.5)
        proxy.hang()
        cut_at = time.time()
        stale = get()  # what the leader last wrote and saw
        time.sleep(0.2)  # a renewal in flight at the cut has landed or failed by now
        held = admin.get_lease(ns, lease)
        assert held is not None and held.holder == "replica-a" and held.renew_time
        token_a = held.transitions
        expires = (held.renew_time.timestamp() + held.duration_seconds)
        assert stale["status"]["fencingToken"] == token_a
        assert stale["status"]["fencingHolder"] == "replica-a"

        done = until("FailedOver", lambda: (o := get()).get("status", {}).get(
            "phase") == "FailedOver" and o, timeout=90)

        # --- the old leader stopped in time, and never wrote -------------------------------
        after_cut = [t for t in lost_a if t >= cut_at]
        assert after_cut, "the cut-off leader's fence never refused"
        assert after_cut[0] < expires, (
            f"the cut-off leader was stopped {after_cut[0] - expires:.2f} s after its "
            "Lease expired; it must stop before")
        final = admin.get_lease(ns, lease)
        assert final is not None and final.holder == "replica-b" and final.acquire_time
        token_b = final.transitions
        assert token_b > token_a
        assert final.acquire_time.timestamp() >= after_cut[0]  # nobody else acted before
        writes = edge.writes()
        assert writes and all(w["holder"] == "replica-b" and w["token"] == token_b
                              for w in writes), writes
        assert edge.current() == {"dc-a": 0, "dc-b": 100}
        ran_a = [status for _, step, status in a.journal.saved if step == "redirect-traffic"]
        assert ran_a and set(ran_a) == {StepStatus.RUNNING}, ran_a  # never called finished
        run_id = done["status"]["run"]["id"]
        assert run_id == stale["status"]["run"]["id"]  # the same run, adopted
        assert a.journal.step(run_id, "redirect-traffic").status is StepStatus.RUNNING
        assert all(s["status"] == "succeeded" for s in done["status"]["run"]["steps"])
        assert done["status"]["fencingToken"] == token_b
        assert done["status"]["fencingHolder"] == "replica-b"
        assert any(e["reason"] == "LeaderChanged" and "replica-b" in e["message"]
                   for e in events_of(kube, name))
        sent = testing.FakeNotifier(testing.FakeNotifier.Options(
            key=f"{name}-im", stateFile=str(state))).sent()
        assert len([m for m in sent if "failing over to dc-b" in m["status"]]) == 1

        # --- its network is back: it follows, it writes nothing ----------------------------
        proxy.resume()
        time.sleep(10 * config.retry_period)
        assert not a.operator.elector.leading()
        back = admin.get_lease(ns, lease)
        assert back is not None and back.holder == "replica-b"
        assert edge.writes() == writes
        now = get()["status"]
        assert (now["fencingHolder"], now["fencingToken"], now["run"]["id"], now["phase"]) \
            == ("replica-b", token_b, run_id, "FailedOver")

        # --- a late status write, believing it still leads (a long pause), is refused ------
        # as the old code did: it finishes its step, records it and mirrors it into status
        a.halt()
        late = a.journal.step(run_id, "redirect-traffic")
        late.status, late.finished_at = StepStatus.SUCCEEDED, time.time()
        a.journal.save_step(late)
        elector = a.operator.elector
        elector._stopping = False  # as if it had never stopped: it believes it leads
        elector._renewed = time.monotonic()
        with pytest.raises(LostLease, match="held by replica-b, not replica-a"):
            a.operator.writer.write(name, stale, generation=stale["metadata"]["generation"])
        # the write as kube retries it: its stale copy gets 409, the re-read finds the newer
        # token and nothing is written
        conflicts = kube_a.conflicts
        mine = {**stale["status"], "lastDecision": "replica-a finished redirect-traffic"}
        with pytest.raises(StaleFencingToken, match=f"fencingToken is {token_b}"):
            kube_a.update_status(GROUP, VERSION, ns, PLURAL, name,
                                 lambda o: {**o, "status": mine}, current=stale,
                                 fencing=Fencing(token_a, "replica-a"))
        assert kube_a.conflicts == conflicts + 1
        now = get()["status"]
        assert (now["fencingHolder"], now["fencingToken"], now["run"]["id"], now["phase"]) \
            == ("replica-b", token_b, run_id, "FailedOver")
    finally:
        proxy.stop()
        for r in replicas:
            r.halt()
        admin.patch(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": []}})
        kube.request("DELETE", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{name}")
    TALLY["fault_survived"] += 1

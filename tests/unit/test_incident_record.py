"""The incident record of a failover: written within its target even while the run waits
hours for an approval, kept current as the run goes on and closed when it ends, named in
every notice, and never in the way of the failover when the records store is down.

The engine runs on the in-memory backends and a fake clock; the records go to the real
directory store (`controller.records.store`), or to one that fails on purpose.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import testing
from controller.backends import Backends
from controller.journal import Journal, Run
from controller.loop import Clock, Engine
from controller.model import Notice, Phase, Sample, Trigger
from controller.plan import FailoverPlan, parse_plan
from controller.plan_records import DirectoryRecordsOptions
from controller.records import incident
from controller.records.store import DirectoryStore, RecordsStore

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
SERVICES = ("web", "api", "hotline")
MINUTE = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"


def make_plan(records: Path, *, approval: bool = True) -> FailoverPlan:
    data = copy.deepcopy(BASE)
    data["spec"]["steps"][1]["approval"] = approval  # redirect-traffic waits for a person
    data["spec"]["records"] = {"store": {"kind": "directory", "options": {"path": str(records)}}}
    return parse_plan(data)


class Broken:
    """A records store that cannot be reached until `heal()`."""

    def __init__(self, store: RecordsStore):
        self.store, self.down, self.tries = store, True, 0

    def put(self, key: str, body: bytes, *, content_type: str) -> None:
        self.tries += 1
        if self.down:
            raise OSError("records.example.test: connection refused")
        self.store.put(key, body, content_type=content_type)

    def keys(self, prefix: str) -> Iterator[str]:
        return self.store.keys(prefix)


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[Notice]:
    """Every notice the in-memory notifier was given, as composed."""
    seen: list[Notice] = []
    send = testing.FakeNotifier.send

    def keep(self: testing.FakeNotifier, *, notice: Notice) -> None:
        seen.append(notice)
        send(self, notice=notice)

    monkeypatch.setattr(testing.FakeNotifier, "send", keep)
    return seen


def engine(plan: FailoverPlan, journal: Journal, clock: testing.FakeClock,
           sink: Any = None) -> Engine:
    e = Engine(plan, journal, backends=Backends(plan), holder="ctl-1",
               clock=Clock(now=clock.now, sleep=clock.sleep), backoff=0.01)
    if sink is not None:
        assert plan.spec.records is not None
        e.notices.incidents = incident.IncidentRecords(
            plan, journal, lambda: sink, now=clock.now,
            where=lambda key: incident.location(plan.spec.records, key),  # type: ignore[arg-type]
            retry=30.0)
    return e


def outage(e: Engine, clock: testing.FakeClock) -> Run:
    testing.set_health("dc-a", False)
    for _ in range(20):
        clock.advance(0.2)
        now = clock.now()
        st = e.tick([Sample(s, False, now, detail="HTTP 503") for s in SERVICES])
        if st.phase is Phase.AWAITING_APPROVAL or st.phase is Phase.FAILED_OVER:
            break
    [run] = e.journal.runs(e.plan.name)
    return run


def versions(root: Path, run: Run) -> list[dict[str, Any]]:
    store = DirectoryStore(DirectoryRecordsOptions(path=str(root)))
    keys = [k for k in store.keys(incident.prefix(run.plan, run.id)) if k.endswith(".json")]
    return [json.loads(store.get(k)) for k in keys]


def wait(e: Engine, clock: testing.FakeClock, seconds: float, every: float = 60.0) -> None:
    """The loop ticks while the run waits for a person (probes still failing)."""
    for _ in range(int(seconds / every)):
        clock.advance(every)
        now = clock.now()
        e.tick([Sample(s, False, now) for s in SERVICES])
        assert e.notices.incidents is not None
        assert e.notices.incidents.flush(30)


def test_a_run_waiting_for_approval_gets_its_record_in_time_and_it_closes_at_the_end(
        journal: Journal, tmp_path: Path, told: list[Notice]) -> None:
    records = tmp_path / "records"
    plan = make_plan(records)
    clock = testing.FakeClock()
    e = engine(plan, journal, clock)
    run = outage(e, clock)
    assert run.phase is Phase.AWAITING_APPROVAL
    wait(e, clock, 3 * 3600)  # nobody approves for three hours

    assert versions(records, run)[0]["written"]["at"] - run.detected_at <= 2 * 3600
    first = versions(records, run)[-1]  # as it stands while the run waits
    assert first["closed"] is False
    assert first["place"] == {"site": "dc-a", "takenOverBy": "dc-b"}
    assert [s["service"] for s in first["scope"]] == ["web", "api", "hotline"]
    assert all(s["downSince"]["at"] <= run.detected_at for s in first["scope"])
    assert first["time"]["detected"]["time"] == incident.clock(run.detected_at)
    assert first["symptoms"] and any(s["sentence"].startswith("tripped: ")
                                     for s in first["symptoms"])
    assert first["level"] == {"initial": 1, "current": 1, "changes": []}
    assert [a["step"] for a in first["actions"] if a["step"]] == ["notify-incident"]

    e.approve(run.id, actor="alice", step="redirect-traffic")
    for _ in range(5):
        clock.advance(1)
        if e.reconcile().phase is Phase.FAILED_OVER:
            break
    assert e.notices.incidents is not None and e.notices.incidents.flush(30)
    last = versions(records, run)[-1]
    assert last["closed"] is True and last["phase"] == "FailedOver"
    assert [a["step"] for a in last["actions"] if a["step"]] == [
        "notify-incident", "redirect-traffic", "dns-cutover", "link-test"]
    assert {"action": "approve", "by": "alice"}.items() <= next(
        a for a in last["actions"] if a["action"] == "approve").items()
    assert len(versions(records, run)) < 3 * 60  # rewritten on news, not on every tick

    md = sorted((records / "incidents" / plan.name / run.id).glob("*.md"))[-1].read_text()
    assert "Place: site dc-a (taken over by dc-b)" in md and "- api (core): down since" in md
    assert "step redirect-traffic (traffic) succeeded" in md
    where = f"{records}/incidents/{plan.name}/{run.id}/"
    routed = [n for n in told if not n.status.startswith("all online")]  # not the step's own
    assert routed and all(n.body == f"Incident record: {where}" for n in routed)
    trail = journal.audit_trail(run_id=run.id)
    assert [r["detail"] for r in trail if r["action"] == incident.WRITTEN] == [
        f"{incident.OPENED}: {where}0001.md",
        f"{incident.CLOSED}: {where}{len(versions(records, run)):04d}.md"]


def test_a_store_that_is_down_never_stops_the_failover_and_is_retried(
        journal: Journal, tmp_path: Path) -> None:
    records = tmp_path / "records"
    plan = make_plan(records, approval=False)
    clock = testing.FakeClock()
    sink = Broken(DirectoryStore(DirectoryRecordsOptions(path=str(records))))
    e = engine(plan, journal, clock, sink)
    run = outage(e, clock)
    assert e.notices.incidents is not None and e.notices.incidents.flush(30)
    assert journal.run(run.id).phase is Phase.FAILED_OVER  # type: ignore[union-attr]
    assert sink.tries >= 1 and versions(records, run) == []

    wait(e, clock, 3 * 3600, every=600)  # still down past the 2 h target
    failed = [r["detail"] for r in journal.audit_trail(run_id=run.id)
              if r["action"] == incident.FAILED]
    assert failed == [
        f"incident record of run {run.id} not written (retried every 30s): "
        "records.example.test: connection refused",
        f"incident record of run {run.id} not written within 2h of detection (target MISSED)"]

    sink.down = False
    wait(e, clock, 60)
    [closed] = versions(records, run)
    assert closed["closed"] is True and closed["phase"] == "FailedOver"
    wait(e, clock, 600)
    assert len(versions(records, run)) == 1  # a closed record is final


def test_the_record_says_each_level_change_and_every_time_to_the_minute() -> None:
    plan = make_plan(Path("/records"))
    run = Run(id="r1", plan=plan.name, kind="failover", phase=Phase.FAILING_OVER, level=1,
              reason="tripped", requested_by="controller", detected_at=1_700_000_000.0,
              started_at=1_700_000_030.0, finished_at=None, approved=True, outcome=None,
              steps=[{"name": "x"}], trigger=Trigger.TRIP)
    trail = [{"at": 1_700_000_100.0, "actor": "controller", "action": "escalate",
              "detail": "level 3 -> 2"},
             {"at": 1_700_000_700.0, "actor": "controller", "action": "escalate",
              "detail": "level 2 -> 1"},
             {"at": 1_700_000_200.0, "actor": "controller", "action": "notify-pending",
              "detail": "im -> @all queued"}]
    doc = incident.document(
        plan, run, steps=[], trail=trail,
        decisions=[{"at": 1_699_999_000.0, "sentence": "healthy: long before"},
                   {"at": 1_699_999_998.0, "sentence": "degraded: hotline down"},
                   {"at": 1_700_000_000.0, "sentence": "tripped: availability 0 %"}],
        down={}, seen={}, within=7200.0, now=1_700_000_800.0)
    assert doc["level"] == {"initial": 3, "current": 1, "changes": [
        {"at": 1_700_000_100.0, "time": "2023-11-14 22:15 UTC", "from": 3, "to": 2},
        {"at": 1_700_000_700.0, "time": "2023-11-14 22:25 UTC", "from": 2, "to": 1}]}
    assert [s["sentence"] for s in doc["symptoms"]] == ["degraded: hotline down",
                                                         "tripped: availability 0 %"]
    assert [s["service"] for s in doc["scope"]] == ["hotline"]  # named in a symptom
    assert doc["scope"][0]["downSince"] is None
    assert doc["target"]["due"]["time"] == "2023-11-15 00:13 UTC"
    assert [a["action"] for a in doc["actions"]] == ["escalate", "escalate"]  # no bookkeeping


"""The engine opens the incident record store with the plan's own secrets: an S3 records
store (moto's real server) whose keys are Kubernetes Secrets (`fromSecret`), as the
operator runs it, gets the record of a failover, the keys read through the reader the
operator gives its backends and never named in the audit."""

from __future__ import annotations

from typing import Any

from controller import testing
from controller.backends import Backends
from controller.drill.servers.moto import MotoServer
from controller.journal import Journal
from controller.loop import Clock, Engine
from controller.model import Phase
from controller.records import incident
from controller.secrets import KubeSecretKey, Secrets
from tests.contract.records.conftest import KEY_ID, SECRET
from tests.unit.test_engine import make_plan


def test_an_incident_record_store_keyed_by_a_secret_gets_the_record(
        journal: Journal, s3_records: dict[str, Any], moto: MotoServer) -> None:
    options = s3_records["store"]["options"]
    options["accessKeyId"] = {"fromSecret": {"name": "records-s3", "key": "id"}}
    options["secretAccessKey"] = {"fromSecret": {"name": "records-s3", "key": "secret"}}
    read: list[str] = []

    def kube_secret(ref: KubeSecretKey) -> bytes:  # what the operator reads from the API
        read.append(f"{ref.name}/{ref.key}")
        return {"id": KEY_ID, "secret": SECRET}[ref.key].encode()

    plan = make_plan(lambda s: s.update(records=s3_records))
    clock = testing.FakeClock()
    engine = Engine(plan, journal, backends=Backends(plan, secrets=Secrets(
        kube_reader=kube_secret)), holder="op-1",
        clock=Clock(now=clock.now, sleep=clock.sleep), backoff=0.01)
    engine.request("failover", actor="alice", reason="dc-a power work")
    for _ in range(10):
        clock.advance(1)
        if engine.reconcile().phase is Phase.FAILED_OVER:
            break
    [run] = journal.runs(plan.name)
    assert run.phase is Phase.FAILED_OVER
    assert engine.notices.incidents is not None and engine.notices.incidents.flush(60)

    keys = [o["Key"] for o in moto.client("s3").list_objects_v2(
        Bucket=options["bucket"], Prefix=f"dc-a/{incident.prefix(plan.name, run.id)}",
    ).get("Contents", [])]
    assert keys and all(k.endswith((".json", ".md")) for k in keys), keys
    assert "records-s3/id" in read and "records-s3/secret" in read
    trail = journal.audit_trail(run_id=run.id)
    assert not [a for a in trail if a["action"] == incident.FAILED], trail
    assert not any(SECRET in str(a["detail"]) for a in trail)

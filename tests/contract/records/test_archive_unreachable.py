"""A records store that cannot be reached when runs end (moto's S3 server stopped): the runs
still finish, the failure is audited once, readiness says how many runs wait and why, the
journal keeps them (prune refuses), and once the store is back a later cycle archives
them all — nothing lost."""

from __future__ import annotations

import json
from typing import Any

from controller import readiness
from controller.drill.servers.base import free_port
from controller.drill.servers.moto import MotoServer
from controller.journal import Journal
from controller.records import archive
from controller.records.store import open_store
from tests.contract.records.conftest import SECRET
from tests.unit.test_engine import World, make_plan
from tests.unit.test_records_archive import failover_and_back


def test_an_unreachable_store_never_stops_a_run_and_archiving_is_retried(
        journal: Journal, s3_records: dict[str, Any]) -> None:
    port = free_port()
    down = MotoServer(port=port).start()
    down.client("s3").create_bucket(Bucket="records-later", ObjectLockEnabledForBucket=True)
    down.stop()
    options = s3_records["store"]["options"]
    options.update(bucket="records-later", endpointUrl=down.endpoint)

    def mutate(spec: dict[str, Any]) -> None:
        spec["records"] = s3_records

    plan = make_plan(mutate)
    world = World(plan, journal)
    failover, back = failover_and_back(world)  # both runs finished: the store is not a step

    assert journal.unarchived(plan.name) == [failover, back]
    failed = [a for a in journal.audit_trail(plan=plan.name)
              if a["action"] == archive.FAILED]
    assert len(failed) == 1 and failed[0]["run_id"] == failover  # once, not per attempt
    assert "EndpointConnectionError" in failed[0]["detail"]
    assert SECRET not in json.dumps(journal.audit_trail())

    later = world.clock.now() + 120
    [check] = [c for c in readiness.checks(plan, world.backends, now=later, journal=journal)
               if c.name == "records: runs archived"]
    assert not check.ok
    assert check.detail.startswith(
        "RecordsNotReady: 2 runs not archived (store error: RecordsError: cannot write "
        f"record runs/memory-drill/{failover}.md in s3://records-later/dc-a/: "
        "EndpointConnectionError")
    pruned = journal.prune(before=later)
    assert pruned.runs == [] and sorted(pruned.unarchived) == sorted([failover, back])

    with MotoServer(port=port):  # the store is back (same bucket: moto's state is in memory)
        world.tick(True)
        assert journal.unarchived(plan.name) == [failover, back]  # not retried before due
        world.tick(True, seconds=archive.RETRY_MAX)
        assert journal.unarchived(plan.name) == []
        store = open_store(plan.spec.records)  # type: ignore[arg-type]
        assert sorted(store.keys("runs/")) == sorted(
            f"runs/memory-drill/{r}.{ext}" for r in (failover, back) for ext in ("json", "md"))
        doc = json.loads(store.get(f"runs/memory-drill/{failover}.json"))
        assert archive.FAILED in [a["action"] for a in doc["audit"]]  # the record says so
        [check] = [c for c in readiness.checks(plan, world.backends,
                                               now=world.clock.now() + 120, journal=journal)
                   if c.name == "records: runs archived"]
        assert check.ok
    pruned = journal.prune(before=world.clock.now() + 1)
    assert sorted(pruned.runs) == sorted([failover, back])

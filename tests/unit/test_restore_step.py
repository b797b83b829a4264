"""The restore step says what it would do and what it does not check: the dry run names
the backup it would restore (id, when taken, how old, its verification) and the RPO that
would result against the step's budget, changing nothing; with no verified backup it
says there is nothing to restore. A restore without a validation query is warned of, and
refused when the plan asks for data checks (`spec.validation.requireDataCheck`).

A backup found damaged at restore time (its integrity pass fails, or its payload does not
authenticate) is replaced by the next verified one in the plan's order, the evidence
saying which failed, why, and the RPO that resulted; any other failure (the restore host,
a refused target, a cancel) is not: it fails the step as it is."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controller import fencing
from controller.backends import Backends
from controller.backups import DamagedBackup
from controller.backups.naming import iso
from controller.backups.selection import NoRestorableBackup
from controller.cli import main
from controller.model import Evidence, PermanentError
from controller.plan import FailoverPlan, PlanError, plan_warnings
from controller.steps import StepContext, restore
from tests.unit.test_engine import make_plan

HOUR = 3600.0
QUERY = {"name": "orders", "sql": "SELECT count(*) FROM orders", "min": 1}


def restore_plan(backups: list[dict[str, Any]], *, validation: list[Any] | None = None,
                 strict: bool | None = None) -> FailoverPlan:
    def mutate(spec: dict[str, Any]) -> None:
        spec["backends"] += [
            {"name": "vault", "role": "store", "kind": "memory",
             "options": {"key": "vault", "backups": backups}},
            {"name": "pg", "role": "restorer", "kind": "memory", "options": {"key": "pg"}}]
        options = {} if validation is None else {"validation": validation}
        spec["steps"].append({"name": "restore-db", "action": "restore", "backend": "pg",
                              "params": {"store": "vault", "dataset": "orders", "rpo": "4h",
                                         "into": {"path": "/srv/pg", "options": options}}})
        if strict is not None:
            spec["validation"] = {"requireDataCheck": strict}
    return make_plan(mutate)


def context(plan: FailoverPlan) -> StepContext:
    return StepContext(plan=plan, run_id="r1", level=None, backends=Backends(plan),
                       lookup_evidence=lambda run, step: {})


def apply(ctx: StepContext) -> Evidence:
    return restore.KIND.apply(ctx.plan.spec.steps[-1], ctx, {})


def restored(ctx: StepContext) -> list[str]:
    return [r["backup"] for r in ctx.backends.restorer("pg").restored()]  # type: ignore[attr-defined]


def preview(plan: FailoverPlan) -> str:
    ctx = context(plan)
    backends = ctx.backends
    summary = restore.KIND.plan(plan.spec.steps[-1], ctx).summary
    assert backends.restorer("pg").restored() == []  # type: ignore[attr-defined]
    return summary


def test_the_dry_run_names_the_backup_its_age_verification_and_the_resulting_rpo() -> None:
    taken = time.time() - 2 * HOUR - 300  # 2h 5m old, whatever the run's duration
    plan = restore_plan([
        {"id": "wal-new", "dataset": "orders", "kind": "continuous",
         "takenAt": taken + 1800, "verified": False, "verification": "checksum mismatch"},
        {"id": "wal-ok", "dataset": "orders", "kind": "continuous", "takenAt": taken,
         "verified": True, "verification": "restored and queried"}], validation=[QUERY])
    said = preview(plan)
    assert said.startswith(f"restoring wal-ok (continuous, taken {iso(taken)}, verified: "
                           "restored and queried): the newest verified continuous backup")
    assert "skipped newer wal-new failed verification (checksum mismatch)" in said
    assert said.endswith("; resulting RPO 2h 5m (within the 4h budget)")


def test_the_dry_run_says_when_the_rpo_would_be_missed() -> None:
    plan = restore_plan([{"id": "daily-1", "dataset": "orders", "kind": "daily",
                          "takenAt": time.time() - 26 * HOUR, "verified": True}])
    assert preview(plan).endswith("; resulting RPO 26h (OVER the 4h budget)")


def test_the_dry_run_says_there_is_nothing_to_restore() -> None:
    plan = restore_plan([{"id": "daily-1", "dataset": "orders", "kind": "daily",
                          "takenAt": time.time() - HOUR}])  # never verified
    assert preview(plan) == ("nothing to restore: no verified backup of orders to restore: "
                             "daily-1 is not verified yet")


def test_a_restore_without_a_validation_query_is_warned_of() -> None:
    assert plan_warnings(restore_plan([], validation=[QUERY])) == []
    assert plan_warnings(restore_plan([])) == [
        "steps[4] (restore-db).params.into.options.validation: no validation query: the "
        "restored data is never checked; add a query, or set "
        "spec.validation.requireDataCheck to refuse such plans"]


def test_a_plan_that_requires_data_checks_refuses_a_restore_without_one() -> None:
    restore_plan([], validation=[QUERY], strict=True)  # has one: accepted
    with pytest.raises(PlanError) as err:
        restore_plan([], strict=True)
    assert ("steps[4] (restore-db).params.into.options.validation: no validation query: the "
            "restored data is never checked; add a query (spec.validation.requireDataCheck "
            "is true)") in str(err.value)


def test_validate_prints_the_warning_and_still_accepts_the_plan(tmp_path: Path) -> None:
    plan = restore_plan([])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan.model_dump(mode="json", by_alias=True,
                                                   exclude_none=True)))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert "  warning: steps[4] (restore-db).params.into.options.validation: no validation " \
           "query" in res.output
    res = CliRunner().invoke(main, ["validate", "-o", "json", str(path)])
    [result] = json.loads(res.output)
    assert result["valid"] and len(result["warnings"]) == 1


def _backup(id: str, kind: str, age_hours: float, **extra: Any) -> dict[str, Any]:
    return {"id": id, "dataset": "orders", "kind": kind, "verified": True,
            "takenAt": time.time() - age_hours * HOUR, **extra}


def test_a_damaged_backup_is_replaced_by_the_next_verified_one_in_the_plans_order() -> None:
    ctx = context(restore_plan([
        _backup("wal-2", "continuous", 0.1, damaged="corrupt"),  # found by the restore
        _backup("wal-1", "continuous", 0.5, damaged="missing"),  # found by the integrity pass
        _backup("daily-2", "daily", 5), _backup("daily-1", "daily", 29),
    ], validation=[QUERY]))
    evidence = apply(ctx)
    assert restored(ctx) == ["daily-2"]  # the damaged ones wrote nothing
    assert evidence["chosen"] == "daily-2" and evidence["integrity"] == (
        "daily-2: mem:daily-2 as cataloged")
    assert [(f["backup"], f["kind"]) for f in evidence["fellBack"]] == [
        ("wal-2", "continuous"), ("wal-1", "continuous")]
    assert "authentication failed at chunk 3" in evidence["fellBack"][0]["why"]
    assert "payload mem:wal-1 is missing" in evidence["fellBack"][1]["why"]
    assert evidence["fellBack"][0]["catalog"] == "marked not verified in mem:wal-2 (by run r1)"
    # written back: the store no longer counts them, so the next restore skips them
    listed = {b.id: b for b in ctx.backends.store("vault").list(dataset="orders")}
    assert [listed[i].verified for i in ("wal-2", "wal-1", "daily-2")] == [False, False, True]
    assert listed["wal-2"].verification.startswith("restore failed: wal-2: authentication")
    assert evidence["why"].startswith("restoring daily-2 (daily, taken ")
    assert ("no continuous backup is verified and intact, so the newest verified and intact "
            "daily backup; skipped newer wal-2 failed at restore (wal-2: authentication "
            "failed") in evidence["why"]
    assert 5 * HOUR <= evidence["rpoSeconds"] < 5 * HOUR + 60  # the RPO of what was restored
    facts = restore.KIND.facts(evidence)
    assert facts[0].startswith("backup `wal-2` (continuous, taken ") and \
        "is damaged, not restored: wal-2: authentication failed" in facts[0]
    assert facts[1].startswith("backup `wal-1` (continuous")
    assert facts[2].startswith("backup chosen: `daily-2`")
    assert "(after falling back)" in facts[-1]


def test_an_intact_first_choice_is_restored_with_its_integrity_pass_and_no_fallback() -> None:
    ctx = context(restore_plan([_backup("wal-1", "continuous", 0.1),
                                _backup("daily-1", "daily", 5)], validation=[QUERY]))
    evidence = apply(ctx)
    assert restored(ctx) == ["wal-1"] and "fellBack" not in evidence
    assert evidence["integrity"] == "wal-1: mem:wal-1 as cataloged"


def test_when_every_verified_backup_is_damaged_the_step_fails_naming_each() -> None:
    ctx = context(restore_plan([_backup("wal-1", "continuous", 0.1, damaged="corrupt"),
                                _backup("daily-1", "daily", 5, damaged="missing"),
                                {**_backup("daily-0", "daily", 29), "verified": None}]))
    with pytest.raises(NoRestorableBackup) as err:
        apply(ctx)
    text = str(err.value)
    assert text.startswith("no verified backup of orders left to restore: wal-1 failed at "
                           "restore (wal-1: authentication failed")
    assert "daily-1 failed at restore (daily-1: its payload mem:daily-1 is missing" in text
    assert "daily-0 is not verified yet" in text
    assert restored(ctx) == []


@pytest.mark.parametrize("failure", ["host", "cancel", "refused"])
def test_a_failure_that_is_not_the_backups_does_not_fall_back(failure: str) -> None:
    plan = restore_plan([_backup("wal-1", "continuous", 0.1),
                         _backup("daily-1", "daily", 5)], validation=[QUERY])
    if failure == "host":  # the restorer cannot reach its host
        pg = next(b for b in plan.spec.backends if b.name == "pg")
        pg.options["fail"] = True
    ctx = context(plan)
    fence = fencing.Fence(3, "controller-a", label="r1/restore-db")
    with fencing.scope(fence):
        if failure == "cancel":
            fence.cancel("step restore-db timed out after 30 s")
            with pytest.raises(fencing.Cancelled, match="timed out"):
                apply(ctx)
        elif failure == "host":
            with pytest.raises(ConnectionError, match="injected restore failure"):
                apply(ctx)
        else:  # the target holds another backup, restored earlier: refused, not retried
            apply(ctx)
            newer = context(restore_plan([_backup("wal-2", "continuous", 0.05),
                                          _backup("wal-1", "continuous", 0.1)],
                                         validation=[QUERY]))
            with pytest.raises(PermanentError, match="is not empty; it holds backup "
                                                     "wal-1") as err:
                apply(newer)
            assert not isinstance(err.value, DamagedBackup)
    assert restored(ctx) == ([] if failure != "refused" else ["wal-1"])


def test_a_step_retried_after_its_restore_landed_is_answered_already_restored() -> None:
    ctx = context(restore_plan([_backup("wal-1", "continuous", 0.1)], validation=[QUERY]))
    with fencing.scope(fencing.Fence(3, "controller-a", label="r1/restore-db")):
        apply(ctx)
    with fencing.scope(fencing.Fence(4, "controller-b", label="r1/restore-db")):
        again = apply(ctx)  # the answer was lost: the step runs again on the next lease
    assert again["chosen"] == "wal-1" and again["alreadyRestored"] is True
    assert restored(ctx) == ["wal-1"]

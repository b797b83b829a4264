"""The restore step says what it would do and what it does not check: the dry run names
the backup it would restore (id, when taken, how old, its verification) and the RPO that
would result against the step's budget, changing nothing; with no verified backup it
says there is nothing to restore. A restore without a validation query is warned of, and
refused when the plan asks for data checks (`spec.validation.requireDataCheck`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from controller.backends import Backends
from controller.backups.naming import iso
from controller.cli import main
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


def preview(plan: FailoverPlan) -> str:
    backends = Backends(plan)
    ctx = StepContext(plan=plan, run_id="dry-run", level=None, backends=backends,
                      lookup_evidence=lambda run, step: {})
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

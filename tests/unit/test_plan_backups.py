"""`spec.backups`: a set per data set names its stores and verifier by role, a continuous
set is pgBackRest's, and an unencrypted pgBackRest repository is refused by `validate`,
naming the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.plan import PlanError, parse_plan, plan_warnings

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "manifests/examples/memory-drill.yaml").read_text())
ENCRYPTED = ("[global]\nrepo1-path=/var/lib/pgbackrest\nrepo1-cipher-type=aes-256-cbc\n"
             "repo1-cipher-pass=secret\nrepo2-type=s3\nrepo2-cipher-type=aes-256-cbc\n"
             "\n[main]\npg1-path=/var/lib/postgresql/15/main\n")


def _store(path: str) -> dict[str, Any]:
    return {"path": path, "encryptionKey": {"fromEnv": "BACKUP_KEY"}}


def plan_with(sets: list[dict[str, Any]], root: str = "/backups", **backends: dict[str, Any]
              ) -> dict[str, Any]:
    """The example plan plus filesystem stores `root`/dc-a and `root`/dc-b, a verifier of
    dc-a, `backends` and `sets` as spec.backups."""
    data = copy.deepcopy(BASE)
    data["spec"]["backends"] += [
        {"name": "dc-a-backups", "role": "store", "kind": "filesystem",
         "options": _store(f"{root}/dc-a")},
        {"name": "dc-b-backups", "role": "store", "kind": "filesystem",
         "options": _store(f"{root}/dc-b")},
        {"name": "verify", "role": "verifier", "kind": "catalog",
         "options": {"store": {"kind": "filesystem", "options": _store(f"{root}/dc-a")}}},
        *({"name": n, **b} for n, b in backends.items())]
    data["spec"]["backups"] = sets
    return data


def daily(**extra: Any) -> dict[str, Any]:
    return {"dataset": "users", "kind": "daily", "store": "dc-a-backups",
            "offsite": "dc-b-backups", "verifier": "verify",
            "source": {"basebackup": {"host": "db.dc-a", "port": 5432}}, **extra}


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(PlanError) as err:
        parse_plan(data)
    return "\n".join(err.value.problems)


def test_a_daily_and_a_continuous_set_validate_with_their_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text(ENCRYPTED)
    plan = parse_plan(plan_with([
        daily(retention={"keep": 14, "maxAge": "30d"}),
        daily(dataset="orders", kind="continuous", every="6h",
              source={"pgbackrest": {"config": str(conf), "stanza": "main",
                                     "offsiteRepo": 2}})]))
    users, orders = plan.spec.backups
    assert (users.every, users.rpo_budget, users.test_restore_every) == (
        86400, 86400 + 7200, 7 * 86400)
    assert users.retention.keep == 14 and users.retention.max_age == 30 * 86400
    assert orders.source.pgbackrest is not None and orders.rpo_budget == 6 * 3600 + 7200
    assert plan_warnings(plan) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"offsite": "dc-a-backups"}, "backups[0] (users).offsite: the off-site copy must go to "
                                  "another store"),
    ({"store": "nowhere"}, "backups[0] (users).store: no store backend named 'nowhere'"),
    ({"verifier": "dc-a-backups"}, "backups[0] (users).verifier: no verifier backend named"),
    ({"kind": "continuous"}, "backups[0] (users).source: a continuous set is WAL-archived by "
                             "pgBackRest"),
    ({"dataset": "user_accounts"}, "spec.backups[0].dataset: 'user_accounts' must be "
                                   "lower-case letters, digits and dashes"),
    ({"source": {}}, "give exactly one of `basebackup`"),
    ({"retention": {"keep": 0}}, "spec.backups[0].retention.keep: Input should be greater "
                                 "than or equal to 1"),
])
def test_a_broken_set_names_its_field_and_fix(change: dict[str, Any], expected: str) -> None:
    assert expected in problems(plan_with([daily(**change)]))


def test_two_sets_of_one_data_set_are_refused() -> None:
    assert "backups: duplicate name 'users'" in problems(plan_with([daily(), daily()]))


def test_the_offsite_store_must_be_another_place() -> None:
    data = plan_with([daily(offsite="same")], same={
        "role": "store", "kind": "filesystem", "options": _store("/backups/dc-a")})
    assert "'same' and 'dc-a-backups' are the same place" in problems(data)


def test_the_verifier_must_verify_the_sets_store() -> None:
    data = plan_with([daily(verifier="other")], other={
        "role": "verifier", "kind": "catalog",
        "options": {"store": {"kind": "filesystem", "options": _store("/backups/dc-b")}}})
    assert "backups[0] (users).verifier: 'other' verifies another store" in problems(data)


def _continuous(config: Path) -> dict[str, Any]:
    return daily(dataset="orders", kind="continuous", source={"pgbackrest": {
        "config": str(config), "stanza": "main", "offsiteRepo": 2}})


@pytest.mark.parametrize(("conf", "expected"), [
    ("[global]\nrepo1-path=/r\nrepo2-path=/o\nrepo2-cipher-type=aes-256-cbc\n"
     "[main]\npg1-path=/d\n",
     "repo1 without a cipher; add `repo1-cipher-type=aes-256-cbc` and a `repo1-cipher-pass`"),
    ("[global]\nrepo1-path=/r\nrepo1-cipher-type=none\n[main]\npg1-path=/d\n",
     "repo1 without a cipher"),
    (ENCRYPTED + "repo3-path=/elsewhere\n", "repo3 without a cipher"),
    # a cipher set for another stanza does not encrypt this one's repository
    ("[global]\nrepo1-path=/r\n[other]\nrepo1-cipher-type=aes-256-cbc\n[main]\n"
     "pg1-path=/d\n", "repo1 without a cipher"),
])
def test_validate_refuses_an_unencrypted_pgbackrest_repository(
        tmp_path: Path, conf: str, expected: str) -> None:
    path = tmp_path / "pgbackrest.conf"
    path.write_text(conf)
    found = problems(plan_with([_continuous(path)]))
    assert f"backups[0] (orders).source.pgbackrest.config: {path} keeps backups " \
           "unencrypted: " in found
    assert expected in found and "create the stanza again" in found


def test_the_offsite_repository_must_be_configured(tmp_path: Path) -> None:
    path = tmp_path / "pgbackrest.conf"
    path.write_text("[global]\nrepo1-path=/r\nrepo1-cipher-type=aes-256-cbc\n")
    assert ("backups[0] (orders).source.pgbackrest.offsiteRepo: "
            f"{path} configures no repo2 (has repo1); add `repo2-path`") in problems(
        plan_with([_continuous(path)]))


def test_a_pgbackrest_config_not_on_this_host_is_a_warning(tmp_path: Path) -> None:
    plan = parse_plan(plan_with([daily(source={"pgbackrest": {
        "config": str(tmp_path / "absent.conf"), "stanza": "main", "offsiteRepo": 2}})]))
    [warning] = plan_warnings(plan)
    assert warning.startswith("backups[0] (users).source.pgbackrest.config: ")
    assert "checked when the backup is taken" in warning

"""The people's roles and the admission policy as shipped: least privilege, no wildcards,
every role bound in the example, and the policy guarding exactly the annotations of
controller/annotations.py (a renamed annotation the policy missed would go unchecked).
Their behaviour on a real API server: tests/e2e/test_identity.py."""

from __future__ import annotations

from typing import Any

from controller import annotations as request_protocol
from controller.crd import GROUP
from tests.unit.test_manifests import DEPLOY, docs

ROLES = {"failover-viewer": set(), "failover-requester": {"request"},
         "failover-approver": {"approve"}, "failover-editor": {"edit"}}


def rules(role: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {role['metadata']['name']}: {rule}"
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


def test_people_roles_grant_only_what_each_part_needs() -> None:
    roles = {d["metadata"]["name"]: d for d in docs("people.yaml")}
    assert set(roles) == set(ROLES) and all(d["kind"] == "Role" for d in roles.values())
    read = {"get", "list", "watch"}
    for name, custom in ROLES.items():
        granted = rules(roles[name])
        writes = {"patch", "update"} if custom else set()
        if name == "failover-editor":
            writes |= {"create", "delete"}
        assert granted == {"failoverplans": read | writes | custom,
                           "failoverplans/status": read, "events": read}, name


def test_every_role_is_bound_in_the_example_and_nothing_cluster_wide() -> None:
    bindings = docs("people-bindings.yaml")
    assert all(b["kind"] == "RoleBinding" for b in bindings)
    assert {b["roleRef"]["name"] for b in bindings} == set(ROLES)
    assert all(s["kind"] == "Group" for b in bindings for s in b["subjects"])


def test_the_policy_guards_every_request_annotation_and_its_by() -> None:
    policy, binding = docs("admission-policy.yaml")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}
    [match] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert match["apiGroups"] == [GROUP] and match["resources"] == ["failoverplans"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    spec = policy["spec"]
    cel = "\n".join(e["expression"] for e in spec["variables"] + spec["validations"])
    for name in (request_protocol.A_REQUEST, request_protocol.A_BY, request_protocol.A_REASON,
                 request_protocol.A_LEVEL, request_protocol.A_APPROVE,
                 request_protocol.A_APPROVED_BY, request_protocol.A_DONE,
                 request_protocol.A_DONE_BY):
        assert f"'{name}'" in cel, f"{name} is not checked by the admission policy"
    for verb in ("request", "approve", "edit"):
        assert f"check('{verb}')" in cel, verb


def test_the_kustomization_ships_roles_and_policy_but_not_the_example_bindings() -> None:
    [kustomization] = docs("kustomization.yaml")
    assert {"people.yaml", "admission-policy.yaml"} <= set(kustomization["resources"])
    assert "people-bindings.yaml" not in kustomization["resources"]
    assert (DEPLOY / "people-bindings.yaml").exists()

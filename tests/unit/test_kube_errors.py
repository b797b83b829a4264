"""A 403 says what fixes it: the RBAC grant the controller lacks, or — when an admission
policy refused the change — the policy's own message, with no grant suggested (no Role
fixes a `*-by` annotation that is not the user's own name). Status bodies as
kube-apiserver 1.36 sends them (captured from the test API server)."""

from __future__ import annotations

import json

from controller.kube_errors import Forbidden, error_from_status

DENIAL = ("ValidatingAdmissionPolicy 'failover-annotations-identity' with binding "
          "'failover-annotations-identity' denied request: failover.example.io/requested-by "
          "must be you, alice (it says bob): the request is recorded under the identity the "
          "cluster authenticated")


def status(message: str) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": message, "reason": "Forbidden", "code": 403,
                       "details": {"name": "shop", "group": "failover.example.io",
                                   "kind": "failoverplans", "causes": [{"message": DENIAL}]}})


def forbidden(message: str) -> Forbidden:
    err = error_from_status(403, status(message), verb="update", group="failover.example.io",
                            plural="failoverplans", namespace="failover-system", name="shop")
    assert isinstance(err, Forbidden) and err.status == 403
    return err


def test_an_admission_policy_denial_shows_the_policys_message_and_no_grant() -> None:
    err = forbidden(f'failoverplans.failover.example.io "shop" is forbidden: {DENIAL}')
    assert str(err) == (
        "Kubernetes API: update failoverplans.failover.example.io failover-system/shop was "
        "refused by the ValidatingAdmissionPolicy failover-annotations-identity (403): "
        "failover.example.io/requested-by must be you, alice (it says bob): the request is "
        "recorded under the identity the cluster authenticated")
    assert "Fix: grant" not in str(err) and "controller's identity" not in str(err)


def test_an_rbac_denial_still_names_the_grant_that_fixes_it() -> None:
    err = forbidden('failoverplans.failover.example.io "shop" is forbidden: User "carol" '
                    'cannot patch resource "failoverplans" in API group "failover.example.io" '
                    'in the namespace "failover-system"')
    assert 'User "carol" cannot patch' in str(err)
    assert ('Fix: grant verb "update" on resource "failoverplans" in apiGroup '
            '"failover.example.io" in namespace failover-system') in str(err)

"""Which name failoverctl's `*-by` annotations carry in a cluster (`remote.identity`): the
one the API server authenticated; a differing `--as` as given, with a warning that the
admission policy refuses it; `--as` or the login when the API server does not say who the
user is (no SelfSubjectReview), saying so. The real API server's side is
tests/e2e/test_identity.py."""

from __future__ import annotations

from controller.remote import identity

BY = "failover.example.io/approved-by"


def test_the_authenticated_name_wins_over_the_login_and_an_equal_as() -> None:
    assert identity("alice", "root", claimed=False, by=BY) == ("alice", "")
    assert identity("alice", "alice", claimed=True, by=BY) == ("alice", "")


def test_a_differing_as_is_written_as_given_with_a_warning() -> None:
    assert identity("kubernetes-admin", "bob", claimed=True, by=BY) == ("bob", (
        "warning: the cluster knows you as kubernetes-admin, but --as says bob: "
        "failover.example.io/approved-by names bob, which the admission policy "
        "(manifests/deploy/admission-policy.yaml) refuses where it is installed; leave out "
        "--as to be named as the cluster knows you"))


def test_an_api_server_that_does_not_say_gets_as_or_the_login_saying_so() -> None:
    for actor, claimed, source in (("bob", True, "--as"), ("root", False, "your login")):
        assert identity(None, actor, claimed=claimed, by=BY) == (actor, (
            "note: the API server does not say who you are (no authentication.k8s.io/v1 "
            f"selfsubjectreviews; Kubernetes 1.28+): failover.example.io/approved-by names "
            f"{actor} (from {source})"))

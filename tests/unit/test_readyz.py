"""/readyz says why a process is not ready: the reason of our own, or the failing check's
error (type and message) with every secret value and a URL's credentials masked."""

from __future__ import annotations

from controller import secrets
from controller.api import Health, NotReady


def _raise(exc: Exception) -> None:
    raise exc


def test_a_reason_of_our_own_is_shown_on_readyz() -> None:
    health = Health(stale_after=30, ready_check=lambda: _raise(
        NotReady("does not act on plans: lease failover-controller is held by op-1")))
    assert health.ready() == (
        False, "not ready: does not act on plans: lease failover-controller is held by op-1")


def test_any_other_error_is_shown_with_its_message_secrets_masked() -> None:
    secrets.remember("tok-9f8e7d6c5b")  # a bearer token read from a Secret
    try:
        health = Health(stale_after=30, ready_check=lambda: _raise(ConnectionError(
            "https://user:s3cret@api.example:6443 refused bearer tok-9f8e7d6c5b")))
        assert health.ready() == (False, "not ready: ConnectionError: "
                                         "https://***@api.example:6443 refused bearer ***")
    finally:
        secrets.forget("tok-9f8e7d6c5b")


def test_ready_when_the_check_passes() -> None:
    assert Health(stale_after=30, ready_check=lambda: None).ready() == (True, "ready")

"""/readyz says why a process is not ready when the reason is ours to show, and only the
exception's type otherwise (its text may carry an address or a credential)."""

from __future__ import annotations

from controller.api import Health, NotReady


def _raise(exc: Exception) -> None:
    raise exc


def test_a_reason_of_our_own_is_shown_on_readyz() -> None:
    health = Health(stale_after=30, ready_check=lambda: _raise(
        NotReady("does not act on plans: lease failover-controller is held by op-1")))
    assert health.ready() == (
        False, "not ready: does not act on plans: lease failover-controller is held by op-1")


def test_any_other_error_is_named_by_its_type_only() -> None:
    health = Health(stale_after=30, ready_check=lambda: _raise(
        ConnectionError("https://user:s3cret@api.example:6443 refused")))
    ready, text = health.ready()
    assert not ready and text == "not ready: ConnectionError" and "s3cret" not in text


def test_ready_when_the_check_passes() -> None:
    assert Health(stale_after=30, ready_check=lambda: None).ready() == (True, "ready")

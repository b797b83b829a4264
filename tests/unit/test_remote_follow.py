"""`Resource.follow`, the remote CLI's watch loop, against an API whose watches end at once
(a proxy or load balancer that closes long requests): it backs off instead of spinning,
still sees every change, and still returns by its deadline (issue 21, item 19)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from controller import kube as k8s
from controller.remote import FOLLOW_BACKOFF_MAX, Resource


class EndsAtOnce:
    """A Kube whose every watch ends with no event, or refuses (`Unavailable`), until
    `changes` holds an object to deliver."""

    def __init__(self, *, refuse: bool = False):
        self.refuse = refuse
        self.watches: list[float] = []
        self.changes: list[dict[str, Any]] = []
        self.obj = {"metadata": {"name": "p", "resourceVersion": "1"}, "status": {}}

    def get(self, *args: Any) -> dict[str, Any]:
        return self.obj

    def watch(self, *args: Any, **kwargs: Any) -> Iterator[k8s.WatchEvent]:
        self.watches.append(time.monotonic())
        if self.refuse:
            raise k8s.Unavailable("Kubernetes API: connection refused")
        while self.changes:
            obj = self.changes.pop(0)
            yield k8s.WatchEvent("MODIFIED", obj, obj["metadata"]["resourceVersion"])


def follow(api: EndsAtOnce, seconds: float, settled: Any = lambda o: False
           ) -> tuple[dict[str, Any], float]:
    res = Resource(api, "ns", "p")  # type: ignore[arg-type]
    started = time.monotonic()
    obj = res.follow(settled, lambda o: None, started + seconds)
    return obj, time.monotonic() - started


def test_watches_that_end_at_once_are_retried_with_backoff_not_in_a_busy_loop() -> None:
    for api in (EndsAtOnce(), EndsAtOnce(refuse=True)):
        _, took = follow(api, 3.0)
        assert 3.0 <= took < 3.0 + 0.5  # returns by its deadline, not before
        assert len(api.watches) <= 12, f"{len(api.watches)} watch calls in 3 s"
        gaps = [b - a for a, b in zip(api.watches, api.watches[1:], strict=False)]
        assert max(gaps) <= FOLLOW_BACKOFF_MAX + 0.1  # bounded: a change is seen within ~2 s


def test_a_change_after_the_backoff_grew_is_still_seen_and_ends_the_follow() -> None:
    api = EndsAtOnce()

    def settled(o: dict[str, Any]) -> bool:
        return o.get("status", {}).get("phase") == "FailedOver"

    def later() -> None:
        time.sleep(2.5)
        api.changes.append({"metadata": {"name": "p", "resourceVersion": "7"},
                            "status": {"phase": "FailedOver"}})

    threading.Thread(target=later, daemon=True).start()
    obj, took = follow(api, 30.0, settled)
    assert obj["status"]["phase"] == "FailedOver"
    assert took < 2.5 + FOLLOW_BACKOFF_MAX + 0.5

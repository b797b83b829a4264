"""Traffic redirection: the `TrafficBackend` protocol and the lazy registry of backends.

Every backend enables the target before draining the source (no 503 window), reports the
weights it saw before its first change as evidence, and reverts to exactly the state it
saved before the step: `snapshot()` is read by the step's `prepare` (journaled before
any change) and handed back to `revert`, so a backend whose state is more than weights
(HAProxy: a server's drain/maintenance state and its configured weight) restores that
too. Every backend calls `fencing.check()` right before each write, so a step that was
cancelled (timeout, lost lease) stops before its next change.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from controller.model import Evidence, Weights

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeTrafficBackend",
    "haproxy": "controller.traffic.haproxy:HaproxyTrafficBackend",
    "istio": "controller.traffic.istio:IstioTrafficBackend",
    "gateway": "controller.traffic.gateway:GatewayTrafficBackend",
    "smi": "controller.traffic.smi:SmiTrafficBackend",
}


@runtime_checkable
class TrafficBackend(Protocol):
    def current(self) -> Weights:
        """The weight each destination (site) carries now. Read-only."""
        ...

    def snapshot(self) -> Evidence:
        """Everything `revert` needs to put this backend back as it is now. Read-only.

        Always `{"weights": current()}`; a backend whose state is more than its weights
        adds what else it restores (HAProxy: `"servers": {name: {"admin": "ready" |
        "drain" | "maint", "weight": N, "op": N}}`). JSON-serialisable: it is journaled.
        """
        ...

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        """Apply `weights` (enable `to` first, then drain the others; a destination not
        named keeps its weight). `weights` must give `to` a weight, and name only known
        destinations (PermanentError, nothing written). Idempotent: nothing is written
        when the backend is already there."""
        ...

    def revert(self, *, to: Weights, snapshot: Evidence | None = None) -> Evidence:
        """Restore the weights `to` saved before the shift (from the step's evidence).

        `snapshot` is what `snapshot()` returned when `to` was read; with it the backend
        also restores what it saved beyond weights (a server of a site whose weight in
        `to` matches the snapshot gets its saved state back). Without it (evidence
        written before snapshots existed) only the weights are restored. Idempotent:
        nothing is written when the backend is already there.
        """
        ...

    def ready(self) -> str | None:
        """For `failoverctl ready`: a read-only, harmless check that this backend can act
        now; returns what it found, raises when it cannot. Default None: nothing to check
        beyond building the backend."""
        return None

"""Traffic redirection: the `TrafficBackend` protocol and the lazy registry of backends.

Every backend enables the target before draining the source (no 503 window), reports the
weights it saw before its first change as evidence, and reverts to exactly those weights.
"""

from __future__ import annotations

from typing import Protocol

from controller.model import Evidence, Weights

KINDS: dict[str, str] = {
    "memory": "controller.testing:FakeTrafficBackend",
    "haproxy": "controller.traffic.haproxy:HaproxyTrafficBackend",
    "istio": "controller.traffic.istio:IstioTrafficBackend",
    "gateway": "controller.traffic.gateway:GatewayTrafficBackend",
    "smi": "controller.traffic.smi:SmiTrafficBackend",
}


class TrafficBackend(Protocol):
    def current(self) -> Weights: ...

    def shift(self, *, to: str, weights: Weights) -> Evidence:
        """Apply `weights` (enable `to` first, then drain the others). Idempotent."""
        ...

    def revert(self, *, to: Weights) -> Evidence:
        """Restore the weights saved before the shift (from the step's evidence)."""
        ...

"""Who may act on a plan: the plan's lease in the journal, the coordinator's lease (a host
lock or etcd) across journals and, in the operator, the replicas' Kubernetes Lease.

`guard` runs before and while a step changes the world (the executor calls it); `token`
is the fencing token those changes carry. Losing any lease raises `LostLease`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.clock import Clock
from controller.coordination import Coordinator
from controller.fencing import LostLease
from controller.journal import Journal

log = logging.getLogger(__name__)


class Lease:
    def __init__(self, journal: Journal, clock: Clock, *, plan: str, holder: str, ttl: float,
                 fence: Callable[[], None] | None, token: Callable[[], int] | None,
                 coordinator: Coordinator | None):
        self.journal, self.clock = journal, clock
        self.name, self.holder, self.ttl = f"plan/{plan}", holder, ttl
        self.fence = fence  # the operator's Kubernetes Lease check; raises LostLease
        self.coordinator = coordinator  # host lock or etcd: who may act across journals
        self._outside_token = token  # the operator's Lease token
        self._token = 0

    def guard(self) -> None:
        """Raise LostLease unless this engine holds the plan's lease and, in the operator,
        the replicas' Kubernetes Lease."""
        if self.fence is not None:
            self.fence()
        self.hold()

    def token(self) -> int:
        """The fencing token this engine acts under (grows with every change of holder)."""
        return self._outside_token() if self._outside_token is not None else self._token

    def hold(self) -> None:
        """Hold (take or renew) the coordinator's lease, then the journal's."""
        outside: int | None = None
        if self.coordinator is not None:
            try:
                outside = self.coordinator.acquire(holder=self.holder, ttl=self.ttl)
            except ConnectionError as exc:
                raise LostLease(f"cannot reach {self.coordinator.describe()}: {exc}") from None
            if outside is None:
                raise LostLease(f"another controller holds {self.coordinator.describe()}")
        token = self.journal.acquire_lease(self.name, self.holder, ttl=self.ttl,
                                           now=self.clock.now())
        if token is None:
            if self.coordinator is not None:
                self.coordinator.release(holder=self.holder)
            raise LostLease(f"another controller holds {self.name}")
        self._token = outside if outside is not None else token

    def holds(self) -> bool:
        try:
            self.hold()
        except LostLease:
            return False
        return True

    def current(self) -> bool:
        """This engine's lease is unexpired (read, never renewed: safe from any thread)."""
        lease = self.journal.lease(self.name)
        return bool(lease and lease["holder"] == self.holder
                    and lease["expires_at"] > self.clock.now())

    def release(self) -> None:
        """Give the leases up at once, so another controller need not wait them out."""
        self.journal.release_lease(self.name, self.holder)
        if self.coordinator is not None:
            try:
                self.coordinator.release(holder=self.holder)
            except ConnectionError as exc:  # its lease then simply expires
                log.warning("could not release %s (it expires on its own): %s",
                            self.coordinator.describe(), exc)

"""Leader election on one coordination.k8s.io/v1 Lease, and the leader's fencing token.

Owns who leads a shard (or the whole namespace) and the token its writes carry; the
operator (`controller/operator.py`) only asks `round()` every retry period, `fence()`
before and while a step acts, and `token()` for each write. Why each rule:

- **Expiry on our own clock**: another holder's Lease has expired when this replica has
  seen it unchanged (same resourceVersion) for its `leaseDurationSeconds` on its own
  monotonic clock, counted from when it first saw that version (client-go's rule). Time
  is never compared across machines, so a replica whose clock runs 20 s ahead waits like
  any other, and a replica that starts up waits one duration before taking a Lease over.
- **Leadership ends at the renew deadline**: we lead until `renew_deadline` after the
  start of our last successful renewal, so a leader cut off from the API server stops
  believing it leads while its Lease still has `lease_duration - renew_deadline` to run
  and nobody else can have taken it. Renewals write the configured duration.
- **The token is `leaseTransitions`**: it grows with every change of holder, so a deposed
  leader's token is smaller than its successor's and a write that compares tokens
  (`kube.Fencing`) refuses it.
- **Fenced steps** (`fence`, the engine's guard, before each step and every
  `LeaderConfig.guard_every` while its work runs): the Lease is read afresh and must be
  ours, with our token; a read that does not answer waits no longer than the renew
  deadline, and goes on only while we are within it. Renew deadline + `guard_every` <
  lease duration, so a leader past its deadline is stopped before its Lease can expire.
- **Advance only on proof, once** (`advance`): a write refused because the object
  carries a larger token than ours (our Lease was created again, or the object was
  written under another Lease) raises ours to one above it, written against the Lease's
  resourceVersion, only while the Lease is still ours with our token, and not at all
  when another worker has raised it that far already. No round renews while a raise is
  between its read and its write (a renewal landing there would refuse it: 409, and on
  a loaded host, whose requests take the retry period, every time); the renewal already
  under way as it began may still land there, and the raise then reads the Lease again.
  Such a raise keeps the holder:
  `leaseTransitions` then counts changes of holder and raises. Whether to outbid at all
  is the plan's fence's call (`controller/operator_fence.py`: once per arrival).
- **Our token never goes back**: a renewal whose answer was read before our own raise
  landed keeps the raised token, and a fence check whose read was sent before it
  accepts the token we had then; otherwise the leader would believe it lost the Lease,
  or write with its old token and raise it again.
- **One deployment of the plans** (`_unopposed`, `controller/lease_rivals.py`): a
  replica looks at the namespace's Leases before it takes its Lease and again after,
  before its leadership begins, and does not lead while a live Lease of another shard
  layout that selects some of the same plans is there (an unsharded deployment beside
  sharded ones, `--shard N/M` with another M): it is not ready, says why once (log and
  an Event on the other Lease) and leads once that Lease lapses. Of two such
  deployments the one that took its Lease later sees the other's, so at most one acts;
  both taking theirs at once both release, and the one whose Lease's name sorts first
  tries again first. A leader never looks again: nobody of another layout can have
  started leading since without seeing its Lease.
- **Stop, then release**: on shutdown `stop` ends our leadership at once (the running
  step's next fence check cancels it, left running for the next leader) and `release`
  frees the Lease so the next leader need not wait it out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from controller import kube as k8s
from controller.fencing import LostLease
from controller.lease_rivals import Rival, RivalLeases

_READER_IDLE = 60.0  # seconds the Lease-reading thread waits for another read, then ends
_ADVANCE_TRIES = 3  # reads and writes of one raise, when a renewal lands in between

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaderConfig:
    lease_name: str = "failover-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def guard_every(self) -> float:
        """How often a running step re-checks the Lease (the engine's `renew_every`):
        every retry period, and often enough that a leader past its renew deadline is
        stopped before its Lease can expire (renew deadline + this < lease duration)."""
        return max(min(self.retry_period,
                       (self.lease_duration - self.renew_deadline) / 2), 0.05)


class Elector:
    """Leader election on one Lease, and the leader's fencing token.

    `fence()` is the engine's guard: before each step and every `retry_period` while a
    step's work runs (the executor's `renew_every`). `token()` is the Lease's
    `leaseTransitions` when we took it, which grows with every change of holder.

    Time is never compared across machines (client-go's rule): another holder's Lease
    has expired when this replica has seen it unchanged (same resourceVersion) for its
    `leaseDurationSeconds` on its own monotonic clock, counted from when it first saw
    that version — so a replica whose clock runs 20 s ahead waits like any other, and a
    replica that starts up waits one duration before taking a Lease over. Our own
    leadership ends `renew_deadline` after our last successful renewal was sent.
    Renewals write the configured duration.
    """

    def __init__(self, kube: k8s.KubeAPI, namespace: str, identity: str,
                 config: LeaderConfig, *, base: str | None = None):
        self.kube, self.namespace, self.identity, self.config = kube, namespace, identity, config
        # base: the Lease name the shards' Leases derive from (`sharding.lease_name`);
        # given, we never lead while a deployment of another layout is live (`_unopposed`)
        self.rivals = None if base is None else RivalLeases(kube, namespace, base,
                                                            config.lease_name)
        self.rival: Rival | None = None  # the live Lease we yield to, last looked
        self._retry_at = 0.0  # time.monotonic(): no try before (both took at once)
        self._renewed: float | None = None  # time.monotonic() when the last renewal was sent
        self._token: int | None = None
        self.transitions = 0
        self._read: Future[k8s.Lease | None] | None = None  # the Lease read in flight
        self._reads: queue.SimpleQueue[tuple[Future[k8s.Lease | None], float]] = \
            queue.SimpleQueue()  # ... handed to the reading thread
        self._reader_thread: threading.Thread | None = None  # ... which runs them
        self._read_lock = threading.Lock()
        # (resourceVersion, time.monotonic() when this replica first saw it)
        self._observed: tuple[str, float] | None = None
        self._stopping = False  # shutting down: lead no more, cancel what runs
        self._advances = 0  # `advance` calls begun: a round's renewal racing one must not
        # set our token back to what the Lease said before it
        self._raising = 0  # `advance` calls writing the Lease now: rounds leave it to them
        self._count_lock = threading.Lock()  # (the two counts, from the workers' threads)

    def stop(self) -> None:
        """Shutting down: from now on we do not lead, and a running step's next fence
        check (within `guard_every`) cancels its work, left running for the next
        leader to resume; `release` then frees the Lease for it at once."""
        self._stopping = True

    def leading(self) -> bool:
        """True until `renew_deadline` after the start of our last successful renewal:
        a leader cut from the API server stops believing it leads while its Lease still
        has `lease_duration - renew_deadline` to run, so nobody else can have taken it."""
        renewed = self._renewed
        return (not self._stopping and renewed is not None
                and time.monotonic() - renewed < self.config.renew_deadline)

    def token(self) -> int:
        """The fencing token of our leadership; LostLease when we do not lead."""
        token = self._token
        if token is None or not self.leading():
            raise LostLease(f"{self.identity} does not lead {self.config.lease_name}")
        return token

    def round(self) -> bool:
        """One election round: create, renew or take over the Lease; True when we lead."""
        if self._stopping:
            return False
        was = self.leading()
        renewed = self._renewed
        if was and self._raising and renewed is not None and \
                time.monotonic() - renewed < self.config.renew_deadline / 2:
            # a raise is between its read and its write of the Lease: a renewal now would
            # refuse it (409), so the next round renews -- or this one, once half the renew
            # deadline is gone: raises back to back never let the lead lapse (a raise
            # refused by our renewal reads the Lease again)
            return was
        if not was and not self._unopposed():
            self._renewed = None
            return False
        sent = time.monotonic()  # the renewTime written is taken before the request
        advances = self._advances
        try:
            lease = self.kube.acquire_lease(self.namespace, self.config.lease_name,
                                            holder=self.identity,
                                            duration_seconds=max(1, round(
                                                self.config.lease_duration)),
                                            expired=self.expired)
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("lease %s: %s", self.config.lease_name, exc)
            lease = None
        if lease is not None and not was and not self._unopposed(took=lease):
            lease = None  # released: the other deployment acts
        if lease is not None:
            token = lease.transitions
            if advances != self._advances and self._token is not None:
                token = max(token, self._token)  # our renewal raced our own advance
            if token != self._token:
                log.info("%s holds %s/%s with fencing token %d", self.identity,
                         self.namespace, self.config.lease_name, token)
            self._renewed, self._token = sent, token
        elif self._renewed is not None and not self.leading():
            self._renewed = None
        if self.leading() != was:
            self.transitions += 1
            log.warning("%s %s leadership of %s/%s", self.identity,
                        "acquired" if self.leading() else "lost", self.namespace,
                        self.config.lease_name)
        return self.leading()

    def _unopposed(self, took: k8s.Lease | None = None) -> bool:
        """Look before we lead: False while a Lease of another layout that overlaps ours
        is live (`lease_rivals`), or the list fails. Looked at before taking our Lease,
        and again once it is taken (`took`: a new term acts only after a look that
        followed the take): of two deployments, the one that took its Lease later sees
        the other's, so at most one acts. Having taken ours, we release it when we see
        one (both took at once: both release; the one whose Lease's name sorts first
        tries again at the next round, the other a Lease duration later)."""
        if self.rivals is None:
            return True
        if took is None and time.monotonic() < self._retry_at:
            return False
        try:
            rival = self.rivals.look(self.identity)
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("%s cannot list the Leases of %s to look for another deployment "
                        "of the operator (%s); not leading until it can", self.identity,
                        self.namespace, exc)
            return False
        self._report(rival)
        if rival is not None and took is not None:
            if self.config.lease_name > rival.lease:
                self._retry_at = time.monotonic() + self.config.lease_duration
            try:
                self.kube.release_lease(took)
            except (k8s.KubeError, ConnectionError) as exc:
                log.warning("could not release lease %s: %s", self.config.lease_name, exc)
        return rival is None

    def _report(self, rival: Rival | None) -> None:
        """Say once when we start or stop yielding to another deployment's Lease."""
        before, self.rival = self.rival, rival
        if rival is None:
            if before is not None:
                log.warning("%s: lease %s/%s (another operator deployment) is no longer "
                            "live; %s may lead %s", self.identity, self.namespace,
                            before.lease, self.identity, self.config.lease_name)
            return
        if before is not None and (before.lease, before.holder) == (rival.lease,
                                                                    rival.holder):
            return
        message = self.why_not()
        log.error("%s", message)
        try:
            self.kube.emit_event(rival.obj, reason="AnotherDeploymentSelectsThesePlans",
                                 message=message, type="Warning",
                                 instance=self.identity)
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("could not record an Event about lease %s: %s", rival.lease, exc)

    def why_not(self) -> str:
        """Why we do not lead while another deployment does ('' when nothing stops us)."""
        rival = self.rival
        if rival is None:
            return ""
        return (f"{self.identity} does not act on plans: lease {self.namespace}/"
                f"{rival.lease}, held by {rival.holder}, is another operator deployment "
                f"that selects some of the same plans as {self.config.lease_name} (an "
                "unsharded deployment beside sharded ones, or --shard N/M with another "
                "M), and only one may act. Stop one of the two deployments (every "
                f"replica of one shard layout); this one leads once {rival.lease} lapses")

    def expired(self, lease: k8s.Lease) -> bool:
        """Whether another holder's `lease` has expired, judged from when this replica
        saw it change: released (no holder), or unchanged for its duration since."""
        now = time.monotonic()
        if self._observed is None or self._observed[0] != lease.resource_version:
            self._observed = (lease.resource_version, now)
        return lease.holder is None or now - self._observed[1] >= lease.duration_seconds

    def fence(self) -> None:
        """Raise LostLease unless we still lead: the Lease, read now, is ours, unexpired and
        not taken by anyone since we took it. When it cannot be read (the API server is
        slow or cut off) we go on only while our last renewal is within the renew
        deadline; the read never waits past it."""
        if self._stopping:
            raise LostLease(f"{self.identity} is shutting down; the next leader resumes "
                            "what runs")
        renewed, token = self._renewed, self._token
        if renewed is None or not self.leading():
            raise LostLease(f"{self.identity} does not lead {self.config.lease_name} (no "
                            f"renewal within the renew deadline, "
                            f"{self.config.renew_deadline:g} s)")
        left = self.config.renew_deadline - (time.monotonic() - renewed)
        try:
            lease = self._read_lease(max(left, 0.05))
        except (k8s.KubeError, ConnectionError, TimeoutError) as exc:
            if self.leading():
                log.info("cannot read lease %s (%s); still within the renew deadline",
                         self.config.lease_name, exc)
                return
            raise LostLease(f"cannot confirm lease {self.config.lease_name} ({exc}) and its "
                            f"last renewal is older than the renew deadline "
                            f"({self.config.renew_deadline:g} s)") from None
        if lease is None or lease.holder != self.identity:  # our time: our renewals
            self._renewed = None
            raise LostLease(f"lease {self.config.lease_name} is held by "
                            f"{lease.holder if lease else 'nobody'}, not {self.identity}")
        # (a read sent before our own `advance` landed shows the token we had then)
        if lease.transitions not in (token, self._token):
            self._renewed = None
            raise LostLease(f"lease {self.config.lease_name} changed hands since "
                            f"{self.identity} took it (fencing token {self._token}, now "
                            f"{lease.transitions})")
        if not self.leading():  # the read answered just as the renew deadline passed
            raise LostLease(f"{self.identity} does not lead {self.config.lease_name} (no "
                            f"renewal within the renew deadline, "
                            f"{self.config.renew_deadline:g} s)")

    def _read_lease(self, wait: float) -> k8s.Lease | None:
        """Read the Lease, waiting at most `wait` seconds (TimeoutError after): the client
        retries a request that gets no answer, so its own timeout does not bound the
        wait. One read at a time: a read still in flight is waited for, not repeated. The
        reads run on one thread of ours (a daemon: a hung read never holds up the exit),
        which ends after `_READER_IDLE` seconds without one."""
        with self._read_lock:
            pending = self._read
            if pending is None or pending.done():
                pending = self._read = Future()
                self._reads.put((pending, wait))
                if self._reader_thread is None or not self._reader_thread.is_alive():
                    self._reader_thread = threading.Thread(target=self._reader, daemon=True,
                                                           name="lease-read")
                    self._reader_thread.start()
        try:
            return pending.result(timeout=wait)
        except FutureTimeout:
            raise TimeoutError(f"no answer within {wait:.1f} s") from None

    def _reader(self) -> None:
        while True:
            try:
                into, wait = self._reads.get(timeout=_READER_IDLE)
            except queue.Empty:
                with self._read_lock:
                    if self._reads.empty():  # (a read queued meanwhile is ours to do)
                        self._reader_thread = None
                        return
                continue
            try:
                into.set_result(self.kube.get_lease(self.namespace, self.config.lease_name,
                                                    timeout=min(wait, self.kube.timeout)))
            except BaseException as exc:  # handed to the waiting fence
                into.set_exception(exc)

    def advance(self, at_least: int) -> int:
        """The Lease is ours, yet an object carries a larger token than ours: the Lease was
        deleted and created again and its count restarted, or the object was written
        under another Lease (a plan moved in from another shard). Raise our token to
        `at_least` (written against the Lease's resourceVersion; nothing written when it
        is there already); LostLease if the Lease is not ours."""
        self.fence()
        token = self._token
        if token is not None and token >= at_least:
            return token  # another worker raised it meanwhile
        with self._count_lock:
            self._advances += 1
            self._raising += 1  # no round renews from now on until we are done ...
        try:
            for attempt in range(_ADVANCE_TRIES):
                try:
                    lease = self._raise_to(at_least, token)
                    break
                except k8s.LeaseLost as exc:
                    # ... but the one renewing as we began (or another worker's raise)
                    # wrote the Lease between our read and our write: read it again
                    if exc.status != 409 or attempt == _ADVANCE_TRIES - 1:
                        raise LostLease(f"could not raise the fencing token of lease "
                                        f"{self.config.lease_name} to {at_least}: "
                                        f"{exc}") from None
                except (k8s.KubeError, ConnectionError) as exc:
                    raise LostLease(f"could not raise the fencing token of lease "
                                    f"{self.config.lease_name} to {at_least}: {exc}") from None
        finally:
            with self._count_lock:
                self._raising -= 1
        self._token = lease.transitions
        return lease.transitions

    def _raise_to(self, at_least: int, token: int | None) -> k8s.Lease:
        """One read of the Lease and, unless it is there already, one write of the raise
        against the resourceVersion read (LeaseLost, status 409, when it changed since)."""
        lease = self.kube.get_lease(self.namespace, self.config.lease_name)
        if lease is None or lease.holder != self.identity or \
                lease.transitions not in (token, self._token):
            raise k8s.LeaseLost(f"lease {self.config.lease_name} changed hands")
        if lease.transitions >= at_least:  # raised meanwhile by another worker
            return lease
        lease = self.kube.advance_lease(lease, transitions=at_least)
        log.warning("lease %s: fencing token raised from %s to %d, the holder kept (the "
                    "Lease was created again after larger tokens had been written, or a "
                    "plan's status was written under another Lease)",
                    self.config.lease_name, token, lease.transitions)
        return lease

    def release(self) -> None:
        """Give the Lease up when it is still ours, so the next leader need not wait it
        out (on shutdown, after `stop`)."""
        if self._token is None:
            return  # never led
        self._renewed = None
        try:
            lease = self.kube.get_lease(self.namespace, self.config.lease_name)
            if lease is not None and lease.holder == self.identity:
                self.kube.release_lease(lease)
        except (k8s.KubeError, ConnectionError) as exc:
            log.warning("could not release lease %s: %s", self.config.lease_name, exc)

"""Runs one step: fenced, cancellable, bounded, and recorded terminal only once it stopped.

Owns the life of one step's work, from the lease check to the outcome written once.
Why each rule:

- **The work runs in a worker under a `Fence`** (`controller.fencing`), while the executor
  keeps the lease: it calls `guard()` every `renew_every` seconds as it waits. A lost lease
  or a passed timeout cancels the fence, and the work stops before its next
  world-changing call — so a step that timed out does not go on changing the world.
- **Terminal only when stopped.** A step is recorded failed or succeeded only when its work
  has returned. Work still running `grace` seconds after the cancel leaves the step
  `unknown`: the engine neither reverts nor proceeds (and keeps the lease) until `settle`
  finds the work stopped and records how it ended.
- **The original first.** The step kind's `plan` (read-only) runs once and its evidence
  is written before `apply` runs, so a revert after a crash still restores the true
  original; a resumed step (running or unknown after a crash) keeps that first original.
- **Every attempt is counted before it starts**, with the fencing token and holder it ran
  under (`evidence.fencing`), so the record says who could have written and when (a
  failed read of the original counts as an attempt too).
- **A step may ask for a person** (`PersonNeeded`): it is recorded `awaiting-person`
  with the question, and the run goes on from there once someone says done.
- **Bounded retries** of what the world may fix (connection errors), with back-off inside
  the step's timeout, the lease renewed while waiting; never a permanent error (rejected
  precondition, bad credentials), a cancel or a lost lease.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from controller import failpoints
from controller.clock import Clock
from controller.failback import left_behind
from controller.fencing import Cancelled, Fence, LostLease, StaleToken, scope
from controller.journal import Journal
from controller.model import PermanentError, StepRecord, StepStatus
from controller.plan import Step
from controller.secrets import redact
from controller.steps import StepContext, step_kind
from controller.steps.manual import PersonNeeded

__all__ = ["Executor", "LostLease", "StepTimeout"]

log = logging.getLogger(__name__)


class StepTimeout(PermanentError):
    pass


class StillRunning(Exception):
    """The work was cancelled but has not stopped within the grace period."""


class Work(Protocol):
    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True once the work has returned or raised."""
        ...

    def outcome(self) -> Any:
        """The work's value, or its exception raised (only after join returned True)."""
        ...


Spawn = Callable[[Callable[[], Any], str], Work]


class _ThreadWork:
    def __init__(self, fn: Callable[[], Any], name: str):
        context = contextvars.copy_context()
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

        def target() -> None:
            try:
                self._value = context.run(fn)
            except BaseException as exc:  # handed to the caller by outcome()
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=target, name=name, daemon=True).start()

    def join(self, timeout: float) -> bool:
        return self._done.wait(max(timeout, 0.0))

    def outcome(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def spawn_thread(fn: Callable[[], Any], name: str) -> Work:
    return _ThreadWork(fn, name)


def _retryable(exc: BaseException) -> bool:
    """Retry what the world may fix; never an interrupt, a cancel or a lost lease."""
    return isinstance(exc, Exception) and not isinstance(
        exc, PermanentError | LostLease | Cancelled | StaleToken | StillRunning)


class Executor:
    def __init__(self, journal: Journal, *, guard: Callable[[], None],
                 token: Callable[[], int], holder: str, clock: Clock | None = None,
                 save: Callable[[StepRecord], None] | None = None, spawn: Spawn = spawn_thread,
                 backoff: float = 0.5, renew_every: float = 10.0, grace: float = 5.0,
                 validity: float = 15.0):
        self.journal, self.guard, self.token, self.holder = journal, guard, token, holder
        self.clock = clock or Clock()
        self.save = save or journal.save_step
        self.spawn, self.backoff = spawn, backoff
        self.renew_every, self.grace = renew_every, grace
        self.validity = validity  # after a renewal, the lease is surely ours this long
        self._valid_until = 0.0
        self.in_flight: dict[str, Work] = {}  # "RUN/STEP" -> work cancelled but not stopped

    # --- one step ---------------------------------------------------------------------------

    def execute(self, step: Step, rec: StepRecord, ctx: StepContext, *,
                detected_at: float) -> StepRecord:
        kind = step_kind(step.action)
        label = f"{rec.run_id}/{rec.name}"
        self._renew()
        held = self.token()
        failpoints.hit(step.name, "before")
        if rec.started_at is None:
            rec.started_at = self.clock.now()
        rec.status, rec.error = StepStatus.RUNNING, None
        deadline = self.clock.monotonic() + step.timeout
        budget = step.retries + 1  # attempts, shared by reading the original and performing
        tries = 0
        while True:
            reading = "prepared" not in rec.evidence
            if not reading:
                tries += 1
                self._count(rec)
            try:
                if reading:  # read-only: the original state, saved before anything changes
                    value = self._run(lambda: kind.prepare(step, ctx), deadline, label,
                                      f"{step.name} (reading the original state)")
                else:
                    value = self._run(partial(kind.apply, step, ctx, dict(rec.evidence)),
                                      deadline, label, step.name)
            except LostLease:
                raise  # the record stays running; the next holder resumes it
            except StillRunning as exc:
                rec.status, rec.error = StepStatus.UNKNOWN, str(exc)
                self.save(rec)
                log.error("step %s: %s", step.name, exc)
                return rec
            except PersonNeeded as exc:  # it goes on once a person says done (People)
                rec.status, rec.error = StepStatus.AWAITING_PERSON, str(exc)
                rec.evidence = {**rec.evidence, "person": exc.asked(self.clock.now())}
                self.save(rec)
                log.warning("step %s waits for a person: %s", step.name, exc)
                return rec
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise  # an interrupt: the record stays running and is resumed
                if reading:  # a failed read of the original is a failed attempt
                    tries += 1
                    rec.attempts += 1
                    self.save(rec)
                if not _retryable(exc) or tries >= budget or \
                        self.clock.monotonic() >= deadline:
                    if reading:
                        rec.evidence = {**rec.evidence, "prepared": True}
                    rec.status, rec.error = StepStatus.FAILED, _describe(exc)
                    return self._finish(rec, step, detected_at)
                self._back_off(step, tries, exc, deadline, held)
                continue
            if reading:
                rec.evidence = {**rec.evidence, **dict(value or {}), "prepared": True}
                self.save(rec)
                failpoints.hit(step.name, "prepared")
                continue
            failpoints.hit(step.name, "performed")  # changed the world, not yet recorded
            rec.evidence = {**dict(value or {}), **rec.evidence}
            rec.status, rec.error = StepStatus.SUCCEEDED, None
            rec = self._finish(rec, step, detected_at)
            failpoints.hit(step.name, "recorded")
            return rec

    def settle(self, step: Step, rec: StepRecord, *, detected_at: float) -> StepRecord | None:
        """A step left `unknown`: None while its work still runs in this process; else the
        record as it can now be told. Work not running here (a crash, another holder
        before us) has stopped: the step is resumed like a running one."""
        label = f"{rec.run_id}/{rec.name}"
        work = self.in_flight.get(label)
        if work is None:
            rec.status = StepStatus.RUNNING
            return rec
        if not work.join(0.0):
            return None
        del self.in_flight[label]
        late = "did not finish within its timeout; its work stopped later"
        try:
            value = work.outcome()
        except BaseException as exc:
            rec.error = f"{late}: {_describe(exc)}"
        else:
            rec.evidence = {**dict(value or {}), **rec.evidence, "completedLate": True}
            rec.error = f"{late} and completed: the change is in place"
        rec.status = StepStatus.FAILED
        return self._finish(rec, step, detected_at)

    def revert(self, step: Step, rec: StepRecord, ctx: StepContext) -> StepRecord:
        """Undo a step that may have written (succeeded, failed, unknown) from its saved
        original; the revert is fenced and bounded by the step's timeout like the step."""
        self._renew()
        label = f"{rec.run_id}/{rec.name}/revert"
        try:
            result = self._run(lambda: step_kind(step.action).revert(step, ctx, rec.evidence),
                               self.clock.monotonic() + step.timeout, label,
                               f"revert of {step.name}")
            rec.evidence = {**rec.evidence, "reverted": result}
            if not left_behind(dict(result or {})):  # a person's change left: not reverted
                rec.status = StepStatus.REVERTED
        except LostLease:
            raise
        except Exception as exc:
            rec.evidence = {**rec.evidence, "revertError": _describe(exc)}
        self.save(rec)
        return rec

    # --- the parts --------------------------------------------------------------------------

    def _renew(self, held: int | None = None) -> None:
        """Renew the lease; a fence made from now on is valid for `validity` seconds. With
        `held`, the token the step's work began under: a lease that lapsed and was taken
        again since (another token) is lost — others may have acted on the step meanwhile,
        and this holder's view of its record is stale."""
        self.guard()
        if held is not None and self.token() != held:
            raise LostLease(f"the lease lapsed and was taken again (token {held} -> "
                            f"{self.token()})")
        self._valid_until = self.clock.monotonic() + self.validity

    def _count(self, rec: StepRecord) -> None:
        """Count the attempt, with the token and holder it runs under, before it starts."""
        rec.attempts += 1
        fencing = [*rec.evidence.get("fencing", []),
                   {"attempt": rec.attempts, "token": self.token(), "holder": self.holder,
                    "at": self.clock.now()}]
        rec.evidence = {**rec.evidence, "fencing": fencing[-20:]}
        self.save(rec)

    def _run(self, fn: Callable[[], Any], deadline: float, label: str, what: str) -> Any:
        """Run `fn` under a fresh fence until it returns, renewing the lease as it goes;
        cancel it when the deadline passes or the lease is lost."""
        fence = Fence(self.token(), self.holder, label=label, wait=self.clock.wait,
                      clock=self.clock.monotonic, valid_until=self._valid_until)

        def fenced() -> Any:
            with scope(fence):
                fence.check()
                return fn()

        work = self.spawn(fenced, f"step-{label}")
        lost: LostLease | None = None
        while not work.join(max(0.0, min(self.renew_every,
                                         deadline - self.clock.monotonic()))):
            if self.clock.monotonic() >= deadline:
                fence.cancel(f"{what} did not finish within its timeout")
                break
            try:
                self._renew(fence.token)
            except Exception as exc:  # not renewed (lost, or the lease store failed): stop
                lost = exc if isinstance(exc, LostLease) else LostLease(
                    f"the lease could not be renewed: {_describe(exc)}")
                fence.cancel(f"lost the lease: {lost}")
                break
            fence.valid_until = self._valid_until
        else:
            if self.clock.monotonic() > self._valid_until:  # paused past the fence's validity
                self._renew(fence.token)  # still ours, or LostLease: the record is not saved
            try:
                return work.outcome()
            except StaleToken as exc:  # a target has seen a newer holder: we are deposed
                raise LostLease(f"{what}: {exc}") from None
        if not work.join(self.grace):
            self.in_flight[label] = work
            if lost is not None:
                log.error("%s: lost the lease and its work has not stopped %.0f s later",
                          what, self.grace)
                raise lost
            raise StillRunning(f"{what} did not finish within its timeout and its work had "
                               f"not stopped {self.grace:g} s after it was cancelled; nothing "
                               "reverts or proceeds until it stops")
        if lost is not None:
            raise lost
        try:
            return work.outcome()  # it finished as the deadline passed: take what it did
        except Cancelled:
            raise StepTimeout(f"{what} did not finish within its timeout; its work was "
                              "stopped") from None

    def _back_off(self, step: Step, tries: int, exc: BaseException, deadline: float,
                  held: int) -> None:
        """Wait before the next attempt (exponential, capped by the deadline), keeping the
        lease (`held`: the token the step began under): a retry never starts after the
        step's deadline, nor after the lease lapsed and was taken again."""
        log.warning("step %s attempt %d failed: %s; retrying", step.name, tries,
                    redact(str(exc)))
        until = min(self.clock.monotonic() + min(self.backoff * 2 ** (tries - 1), 30.0),
                    deadline)
        while (left := until - self.clock.monotonic()) > 0:
            self.clock.sleep(min(left, self.renew_every))
            self._renew(held)

    def _finish(self, rec: StepRecord, step: Step, detected_at: float) -> StepRecord:
        rec.finished_at = self.clock.now()
        assert rec.started_at is not None
        rec.elapsed_s = round(rec.finished_at - rec.started_at, 6)
        rec.since_detection_s = round(rec.finished_at - detected_at, 6)
        if rec.status is StepStatus.FAILED:
            rec.met = False
        elif step.target is not None:
            rec.met = rec.since_detection_s <= step.target
        self.save(rec)
        log.info("step %s %s after %.2f s (%d attempts)%s", rec.name, rec.status.value,
                 rec.elapsed_s, rec.attempts, f": {rec.error}" if rec.error else "")
        return rec


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, PermanentError | AssertionError):
        text = f"{type(exc).__name__}: {text}"
    return redact(text)

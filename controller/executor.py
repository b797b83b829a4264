"""Runs one step: fencing check, saved original, bounded retries, timeout, the record.

The sequence for every step is the same and is what makes a run resumable:
1. re-check the lease (fencing) — a controller that lost it stops before touching anything;
2. `prepare` once and write its evidence (the original state) to the journal;
3. `perform` with tenacity-bounded retries inside the step's timeout, each attempt
   counted in the journal before it starts;
4. write the outcome once: start, end, elapsed, time since detection, target met or not.
A permanent error (rejected precondition, bad credentials) is not retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from controller import failpoints
from controller.actions import HANDLERS, StepContext
from controller.journal import Journal
from controller.model import PermanentError, StepRecord, StepStatus
from controller.plan import Step
from controller.secrets import redact

log = logging.getLogger(__name__)


class LostLease(Exception):
    """Another controller holds the lease: stop acting at once, leave the step to it."""


class StepTimeout(PermanentError):
    pass


def _call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run fn in a worker thread; give up waiting after `timeout` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"step-{what}", daemon=True)
    worker.start()
    worker.join(max(timeout, 0.0))
    if worker.is_alive():
        raise StepTimeout(f"{what} did not finish within its timeout ({timeout:.1f} s left)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _retryable(exc: BaseException) -> bool:
    """Retry what the world may fix; never an interrupt (Ctrl-C, SIGTERM) or a lost lease."""
    return isinstance(exc, Exception) and not isinstance(exc, PermanentError | LostLease)


class Executor:
    def __init__(self, journal: Journal, *, now: Callable[[], float],
                 guard: Callable[[], None], sleep: Callable[[float], None] = time.sleep,
                 backoff: float = 0.5):
        self.journal, self.now, self.guard = journal, now, guard
        self.sleep, self.backoff = sleep, backoff

    def execute(self, step: Step, rec: StepRecord, ctx: StepContext, *,
                detected_at: float) -> StepRecord:
        handler = HANDLERS[step.action]
        self.guard()
        failpoints.hit(step.name, "before")
        if rec.started_at is None:
            rec.started_at = self.now()
        rec.status = StepStatus.RUNNING
        deadline = time.monotonic() + step.timeout
        budget = step.retries + 1  # attempts, shared by reading the original and performing
        if "prepared" not in rec.evidence:  # only once: a resumed step keeps the true original
            failed_reads = 0

            def read() -> dict[str, Any]:
                nonlocal failed_reads
                self.guard()
                try:
                    return dict(_call_with_timeout(
                        lambda: handler.prepare(step, ctx), deadline - time.monotonic(),
                        f"{step.name} (reading the original state)") or {})
                except Exception:
                    failed_reads += 1  # a failed read of the original is a failed attempt
                    rec.attempts += 1
                    self.journal.save_step(rec)
                    raise

            try:
                rec.evidence = {"prepared": True, **self._retrying(step, budget, deadline)(read)}
            except LostLease:
                raise
            except (Exception, RetryError) as exc:
                rec.evidence = {"prepared": True}
                rec.status, rec.error = StepStatus.FAILED, _describe(exc)
            budget -= failed_reads
        self.journal.save_step(rec)
        failpoints.hit(step.name, "prepared")
        if rec.status is StepStatus.FAILED:
            return self._finish(rec, step, detected_at)

        def attempt() -> Any:
            rec.attempts += 1
            self.journal.save_step(rec)
            self.guard()
            return _call_with_timeout(lambda: handler.perform(step, ctx, rec.evidence),
                                      deadline - time.monotonic(), f"{step.name}")

        retrying = self._retrying(step, budget, deadline)
        try:
            result = retrying(attempt)
            failpoints.hit(step.name, "performed")  # changed the world, not yet recorded
            rec.evidence = {**dict(result or {}), **rec.evidence}
            rec.status, rec.error = StepStatus.SUCCEEDED, None
        except LostLease:
            raise
        except (Exception, RetryError) as exc:
            rec.status, rec.error = StepStatus.FAILED, _describe(exc)
        rec = self._finish(rec, step, detected_at)
        failpoints.hit(step.name, "recorded")
        return rec

    def _retrying(self, step: Step, attempts: int, deadline: float) -> Retrying:
        """Bounded retries of transient errors: at most `attempts` tries, none started
        after the step's deadline."""
        return Retrying(
            stop=stop_after_attempt(max(attempts, 1))
            | stop_after_delay(max(deadline - time.monotonic(), 0.0)),
            wait=wait_exponential(multiplier=self.backoff, max=30),
            retry=retry_if_exception(_retryable),
            sleep=self.sleep,
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "step %s attempt %d failed: %s; retrying", step.name, rs.attempt_number,
                redact(str(rs.outcome.exception()) if rs.outcome else "")),
        )

    def _finish(self, rec: StepRecord, step: Step, detected_at: float) -> StepRecord:
        rec.finished_at = self.now()
        assert rec.started_at is not None
        rec.elapsed_s = round(rec.finished_at - rec.started_at, 6)
        rec.since_detection_s = round(rec.finished_at - detected_at, 6)
        if rec.status is StepStatus.FAILED:
            rec.met = False
        elif step.target is not None:
            rec.met = rec.since_detection_s <= step.target
        self.journal.save_step(rec)
        log.info("step %s %s after %.2f s (%d attempts)%s", rec.name, rec.status.value,
                 rec.elapsed_s, rec.attempts, f": {rec.error}" if rec.error else "")
        return rec

    def revert(self, step: Step, rec: StepRecord, ctx: StepContext) -> StepRecord:
        """Undo a finished (or partly done) traffic/DNS step from its saved original."""
        self.guard()
        try:
            result = HANDLERS[step.action].revert(step, ctx, rec.evidence)
            rec.evidence = {**rec.evidence, "reverted": result}
            rec.status = StepStatus.REVERTED
        except Exception as exc:
            rec.evidence = {**rec.evidence, "revertError": _describe(exc)}
        self.journal.save_step(rec)
        return rec


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, PermanentError | AssertionError):
        text = f"{type(exc).__name__}: {text}"
    return redact(text)

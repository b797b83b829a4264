"""Small immutable records shared by every layer: samples, decisions, step records, phases.

They live apart from the plan schema and the engine so that the probe, traffic, DNS and
backup packages can depend on them without depending on anything that acts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

Evidence = dict[str, Any]
"""What a step observed and changed, JSON-serialisable; stored in the journal, never secrets."""

Weights = dict[str, int]
"""Traffic weight per destination (site or backend server name), e.g. {"dc-a": 0, "dc-b": 100}."""


class Phase(enum.StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    TRIPPED = "Tripped"
    AWAITING_APPROVAL = "AwaitingApproval"
    FAILING_OVER = "FailingOver"
    FAILED_OVER = "FailedOver"
    FAILING_BACK = "FailingBack"
    FAILED = "Failed"
    SUPERSEDED = "Superseded"  # a run only: older than a finished newer run, never resumed
    INVALID = "Invalid"  # a FailoverPlan status only: its spec cannot run, so it is not watched


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting-approval"
    AWAITING_PERSON = "awaiting-person"  # a human step: done when someone says so
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    REVERTED = "reverted"
    UNKNOWN = "unknown"  # cancelled, but its work had not stopped: may still be writing


# the statuses a step ends in (never left again, except a revert of a finished step)
TERMINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED,
                      StepStatus.REVERTED})


class Trigger(enum.StrEnum):
    """What started a run: the policy tripped on a threshold (a failover), the policy
    cleared and the plan fails back automatically, or a person requested it."""

    TRIP = "trip"
    CLEAR = "clear"
    REQUEST = "request"


@dataclass(frozen=True, slots=True)
class Origin:
    """Why a run started, as data: its trigger, who (the requester, or "controller") and
    why (the request's reason, or the decision's sentence)."""

    trigger: Trigger
    by: str
    reason: str

    @property
    def requested(self) -> bool:
        return self.trigger is Trigger.REQUEST

    def text(self) -> str:
        """For people: "requested by alice: dc-a power work", or the policy's sentence."""
        return f"requested by {self.by}: {self.reason}" if self.requested else self.reason

    def to_json(self) -> dict[str, str]:
        return {"trigger": self.trigger.value, "by": self.by, "reason": self.reason}


class PermanentError(Exception):
    """A step failure that retrying cannot fix (bad credentials, rejected precondition)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe result for one service (or business signal) at one instant (epoch seconds)."""

    service: str
    ok: bool
    at: float
    latency: float | None = None
    detail: str = ""
    value: float | None = None  # business signals (e.g. complaints per hour) carry a number
    # a failure that may be the controller's own lateness (a timeout while the probe loop
    # was stalled), excused by the scheduler within its bound: ok stays False, so nothing
    # takes it for healthy, and the policy counts it neither as a failure nor as a success
    # (controller/probes/scheduler.py)
    inconclusive: bool = False


class DecisionState(enum.StrEnum):
    """What the policy concluded about the primary, as data (the sentence is for people)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"  # failing, but not (yet) for the dwell
    HELD = "held"  # would trip, but the cooldown holds automatic failover
    TRIPPED = "tripped"  # trips now: a failover starts
    STILL_TRIPPED = "still-tripped"  # tripped earlier and not recovered
    CLEARED = "cleared"  # recovered after a trip: a failback may start


class DecisionAction(enum.StrEnum):
    """What a decision asks the engine to do (stored in the journal's decisions)."""

    NONE = "none"
    TRIP = "trip"
    CLEAR = "clear"
    HOLD = "hold"


_ACTIONS = {DecisionState.TRIPPED: DecisionAction.TRIP,
            DecisionState.CLEARED: DecisionAction.CLEAR, DecisionState.HELD: DecisionAction.HOLD}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy concluded, with one sentence a human can read in a status line.
    `changed`: the first decision in this state since one in another state (worth a
    journal row and a log line; the same state again is not news)."""

    state: DecisionState
    level: int | None
    sentence: str
    at: float
    changed: bool = True

    @property
    def action(self) -> DecisionAction:
        return _ACTIONS.get(self.state, DecisionAction.NONE)


@dataclass(frozen=True, slots=True)
class Record:
    """One DNS RRset: owner name (absolute, trailing dot), type, TTL and its values."""

    name: str
    type: str
    ttl: int
    values: tuple[str, ...]

    def key(self) -> tuple[str, str]:
        return (self.name.lower().rstrip(".") + ".", self.type.upper())

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "ttl": self.ttl, "values": list(self.values)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        return cls(
            name=data["name"],
            type=data["type"],
            ttl=int(data["ttl"]),
            values=tuple(sorted(str(v) for v in data["values"])),
        )


@dataclass(frozen=True, slots=True)
class Backup:
    """One backup in a store; only `verified is True` makes it restorable."""

    id: str
    dataset: str
    kind: str  # "continuous" | "daily" | "full" | "incremental"
    taken_at: float
    location: str
    verified: bool | None = None
    verification: str = ""
    size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a restore goes: a host (optional, for remote restores) and a data directory."""

    host: str | None
    path: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification following the incident-report template of the emergency plans:
    fault status, affected services (the ones down), estimated recovery, the run and a
    link to it, the time of the event (epoch seconds) and who it is for."""

    plan: str
    level: int | None
    subject: str
    status: str
    affected: tuple[str, ...] = ()
    estimated_recovery: str = ""
    run_id: str | None = None
    recipients: tuple[str, ...] = ()
    body: str = ""
    link: str = ""
    at: float | None = None


@dataclass(slots=True)
class StepRecord:
    """One step of one run as the journal holds it; elapsed and met are filled on finish."""

    run_id: str
    index: int
    name: str
    action: str
    status: StepStatus = StepStatus.PENDING
    target_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    elapsed_s: float | None = None
    since_detection_s: float | None = None
    met: bool | None = None
    attempts: int = 0
    evidence: Evidence = field(default_factory=dict)
    error: str | None = None
    approved_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "action": self.action,
            "status": self.status.value,
            "targetSeconds": self.target_s,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "elapsedSeconds": self.elapsed_s,
            "sinceDetectionSeconds": self.since_detection_s,
            "met": self.met,
            "attempts": self.attempts,
            "evidence": self.evidence,
            "error": self.error,
            "approvedBy": self.approved_by,
        }

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


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy concluded, with one sentence a human can read in a status line."""

    action: str  # "none" | "trip" | "clear" | "hold"
    level: int | None
    sentence: str
    at: float


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

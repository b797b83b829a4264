"""What every part of the engine shares: the plan, its journal, the clock, the identity its
fenced journal writes carry, and the events of the cycle under way (see `cycle`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.clock import Clock
from controller.engine.cycle import Event
from controller.journal import Journal
from controller.plan import FailoverPlan


@dataclass
class Core:
    plan: FailoverPlan
    journal: Journal
    clock: Clock
    as_holder: tuple[str, str]  # (lease name, holder): every fenced journal write
    did: list[Event] = field(default_factory=list)  # this cycle's events so far

    @property
    def name(self) -> str:
        return self.plan.name

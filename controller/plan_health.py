"""What a plan watches and how it grades what it sees: the `spec.services` (customer
channels and their probes), `spec.signals` (business signals against a baseline or a
threshold), `spec.trigger` and `spec.levels` models, with the emergency plans' level table
as the default (`default_levels`).

Owns the shape and the validation of these parts of a plan; `controller.policy` owns what
they mean at run time. Kept below the plan (it imports none of it, nor the registry) so
the policy and the probes can use them without the step kinds the plan validates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from controller.schema import Duration, Name, Percent, PositiveDuration, Strict, format_duration


class ProbeSpec(Strict):
    kind: str = Field(description="probe kind: http, tcp, dns, postgres, prometheus, memory")
    options: dict[str, Any] = Field(default_factory=dict)


class Service(Strict):
    """One customer channel (web, app/API, hotline, social media...)."""

    name: Name
    core: bool = False
    probes: list[ProbeSpec] = Field(min_length=1)
    interval: PositiveDuration = 10.0
    timeout: PositiveDuration = Field(
        5.0, description="per probe; default 5s, or the interval when that is shorter")
    quorum: int = Field(0, ge=0, description="k-of-n: this many failed probes (vantage "
                        "points) fail a round; 0 = a majority")

    @field_validator("timeout")
    @classmethod
    def _timeout_within_interval(cls, value: float, info: ValidationInfo) -> float:
        # Rounds of one service never overlap, so a longer timeout cannot be honoured: a
        # hung service would be sampled once per timeout and detection would take
        # timeout/interval times longer than the plan says. Refuse it rather than cut it.
        interval = info.data.get("interval")
        if interval is not None and value > interval:
            raise ValueError(
                f"{format_duration(value)} is longer than the interval "
                f"{format_duration(interval)}; a service's rounds never overlap, so a hung "
                f"probe would be sampled only every {format_duration(value)}: use a timeout "
                f"of at most {format_duration(interval)} or raise interval to at least "
                f"{format_duration(value)}")
        return value

    @model_validator(mode="after")
    def _default_timeout(self) -> Service:
        # without a timeout: 5 s, or the interval when that is shorter
        if "timeout" not in self.model_fields_set and self.timeout > self.interval:
            self.timeout = self.interval
        return self

    @model_validator(mode="after")
    def _quorum(self) -> Service:
        if self.quorum > len(self.probes):
            raise ValueError(f"quorum {self.quorum} is more than the {len(self.probes)} probes; "
                             "use at most the number of probes (0 = majority)")
        return self


class Signal(Strict):
    """A business signal (complaint volume, traffic, customer satisfaction), compared in
    its `direction` with a baseline (a fixed number, a rolling average the controller
    keeps, or a query's answer) or with an absolute `threshold`. A breach trips the plan
    (unless `trips: false`) and counts for the level rules that name the signal."""

    name: Name
    probe: ProbeSpec
    direction: Literal["above", "below"] = Field(
        "above", description="above: breached when the value rises past the reference; "
        "below: when it falls under it")
    baseline: float | None = Field(None, gt=0, description="a fixed baseline, e.g. the "
                                   "daily average the surge is measured from")
    rolling_baseline: PositiveDuration | None = Field(
        None, alias="rollingBaseline", description="the baseline is the average of the "
        "signal's own values over this long (e.g. 24h: the daily average), kept by the "
        "controller; values taken while breached are left out")
    baseline_query: ProbeSpec | None = Field(
        None, alias="baselineQuery", description="the baseline is this probe's value, e.g. "
        "a Prometheus avg_over_time(tickets[1d]); probed at the signal's interval")
    threshold: float | None = Field(None, description="an absolute value instead of a "
                                    "baseline, e.g. 3.5 (satisfaction out of 5, below)")
    surge: Percent = Field(50, description="above a baseline: breached when the value "
                           "exceeds it by this %")
    drop: Percent | None = Field(None, description="below a baseline: breached when the "
                                 "value falls this % under it, e.g. 80 (traffic down 80 %)")
    trips: bool = Field(True, description="a breach activates the plan; false: it only "
                        "grades the level (levels[].signals)")
    interval: PositiveDuration = 60.0

    @model_validator(mode="after")
    def _one_reference(self) -> Signal:
        given = [alias for alias, value in (
            ("baseline", self.baseline), ("rollingBaseline", self.rolling_baseline),
            ("baselineQuery", self.baseline_query), ("threshold", self.threshold))
            if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of baseline, rollingBaseline, baselineQuery or threshold "
                f"(got {', '.join(given) or 'none'}), e.g. baseline: 100 or "
                "rollingBaseline: 24h")
        if self.drop is not None and (self.direction != "below" or self.threshold is not None):
            raise ValueError("drop: only for direction: below with a baseline; remove it, "
                             "or set direction: below and a baseline")
        if self.direction == "below" and self.threshold is None and self.drop is None:
            raise ValueError("drop: a signal compared below a baseline needs drop (%), "
                             "e.g. drop: 80 for 'down 80 %'")
        return self

    def reference(self, baseline: float | None) -> float | None:
        """The value the signal is breached past, given its `baseline` now (None: not
        known yet, e.g. a rolling average with no history): the threshold, or the baseline
        raised by `surge` % (above) or lowered by `drop` % (below)."""
        if self.threshold is not None:
            return self.threshold
        if baseline is None:
            return None
        if self.direction == "above":
            return baseline * (1 + self.surge / 100)
        return baseline * (1 - (self.drop or 0.0) / 100)

    def breached(self, value: float, reference: float) -> bool:
        return value > reference if self.direction == "above" else value < reference

    @property
    def baseline_name(self) -> str:
        """The name `baselineQuery`'s samples carry (no service or signal can have it)."""
        return f"{self.name}:baseline"


class Trigger(Strict):
    consecutive_failures: int = Field(3, ge=1, alias="consecutiveFailures")
    availability_floor: Percent = Field(70, alias="availabilityFloor")
    window: Duration = 300.0
    dwell: Duration = 30.0
    clear_after: int = Field(3, ge=1, alias="clearAfter")
    cooldown: Duration = 1800.0


class LevelRule(Strict):
    """Any one condition makes the incident this level; level 1 is the most severe."""

    level: int = Field(ge=1, le=4)
    all_services_down: bool = Field(False, alias="allServicesDown")
    unavailable_at_least: Percent | None = Field(
        None, alias="unavailableAtLeast", description="share of the plan's services down "
        "(failed probes in a row), %")
    core_down_for: Duration | None = Field(None, alias="coreDownFor")
    any_down_for: Duration | None = Field(None, alias="anyDownFor")
    signal_surge: bool = Field(False, alias="signalSurge",
                               description="any signal of the plan breached")
    lost_over: Percent | None = Field(
        None, alias="lostOver", description="more than this share of the core service "
        "lost: 100 - core availability over the window, %; a partial outage counts what "
        "it loses")
    signals: list[Name] = Field(default_factory=list, description="any of these signals "
                                "(by name) breached, in its own direction")
    respond_within: Duration | None = Field(
        None, alias="respondWithin", description="response target at this level, from "
        "detection: steps with levelTarget: respond must be done by then")
    fix_within: Duration | None = Field(
        None, alias="fixWithin", description="fix target at this level, from detection: "
        "steps with levelTarget: fix must be done by then")


    def has_condition(self) -> bool:
        """False: the rule matches every incident that no more severe rule matched."""
        return (self.all_services_down or self.signal_surge or bool(self.signals)
                or any(v is not None for v in (self.unavailable_at_least, self.lost_over,
                                               self.core_down_for, self.any_down_for)))


def default_levels() -> list[LevelRule]:
    """The emergency plans' table: level 1 when everything is down, more than 80 % of the
    service is lost or a core system is down 4 h; level 2 when more than half is lost, 50 %
    of the channels are down, one is down 2 h or a signal is breached; level 3 otherwise
    (one channel down under 2 h: with two core channels, exactly half). Response / fix
    targets: the handbook's."""
    return [
        LevelRule.model_validate({"level": 1, "allServicesDown": True,
                                  "unavailableAtLeast": 80, "lostOver": 80,
                                  "coreDownFor": "4h", "respondWithin": "2h",
                                  "fixWithin": "4h"}),
        LevelRule.model_validate({"level": 2, "unavailableAtLeast": 50, "lostOver": 50,
                                  "anyDownFor": "2h", "signalSurge": True,
                                  "respondWithin": "4h", "fixWithin": "8h"}),
        LevelRule.model_validate({"level": 3, "respondWithin": "8h", "fixWithin": "12h"}),
    ]

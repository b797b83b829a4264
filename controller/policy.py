"""Pure trip / clear / level logic: (plan, prior state, new samples, now) -> decision, state.

No I/O and no clock of its own, so every decision can be unit-tested and replayed from a
recorded trace. The state is plain JSON, persisted in the journal between ticks with the
window's sample history (`to_json`). What the FailoverPlan's status shows is another
view (`observed`): observations in the API's camelCase, never the samples, so its size
depends on the number of services, not on the window or the probe interval. A replica
that takes over from the status (`from_observed`) keeps the decision, a trip in progress,
its level, the cooldown and each service's count of passed and failed probes in the
window, which its own probes then replace.

Rules (defaults from the emergency plans):
- a service is DOWN after `consecutiveFailures` failed samples in a row; an inconclusive
  sample (a timeout while the controller itself was late) neither adds to nor breaks a
  run of failures, and counts in the window as no evidence of an outage, like a service
  not probed yet: a controller so late that few of its probes are conclusive must not
  judge the window by those few (the probe scheduler excuses at most
  `consecutiveFailures` of them since a service's last good probe and counts the rest as
  failures, so an outage is still detected: controller/probes/scheduler.py);
- core availability = mean over core services of their success ratio in `window`
  (a DOWN service counts 0 %); below `availabilityFloor` for `dwell` -> trip;
- a business signal breached for `dwell` -> trip: above its baseline x (1 + surge %),
  below it x (1 - drop %), or past an absolute threshold; the baseline is fixed, the
  last answer of its query (samples named `<signal>:baseline`), or a rolling average
  the state keeps in 24 buckets over `rollingBaseline` (bounded whatever the probe
  interval; values taken while breached stay out, so an incident never raises its own
  baseline). A signal with `trips: false` only grades the level;
- clear after every core service has `clearAfter` successes in a row and nothing trips;
- no automatic trip within `cooldown` of the last failover;
- the level is the most severe matching rule (services down, the share of the core
  service lost = 100 - availability, how long services are down, signals breached), and
  never drops while tripped: a partial outage is graded by what it loses as the window
  fills, so its level rises with the evidence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from controller.model import Decision, DecisionState, Sample
from controller.plan import FailoverPlan, LevelRule, Signal

BUCKETS = 24  # a rolling baseline's resolution: its window / 24 (an hour of a day)


@dataclass
class ServiceState:
    failures: int = 0
    successes: int = 0
    failing_since: float | None = None
    history: list[tuple[float, bool]] = field(default_factory=list)
    last_detail: str = ""


@dataclass
class PolicyState:
    services: dict[str, ServiceState] = field(default_factory=dict)
    signals: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # the query's last answer
    rolling: dict[str, list[list[float]]] = field(default_factory=dict)  # [start, sum, n]
    below_floor_since: float | None = None
    surge_since: float | None = None
    tripped: bool = False
    detected_at: float | None = None
    level: int | None = None
    cooldown_until: float | None = None
    decided: DecisionState | None = None  # the state of the last decision

    def to_json(self) -> dict[str, Any]:
        return {  # by hand: dataclasses.asdict deep-copies every sample of every tick
            "services": {name: {"failures": s.failures, "successes": s.successes,
                                "failing_since": s.failing_since, "history": list(s.history),
                                "last_detail": s.last_detail}
                         for name, s in self.services.items()},
            "signals": dict(self.signals), "baselines": dict(self.baselines),
            "rolling": {name: [list(b) for b in buckets]
                        for name, buckets in self.rolling.items()},
            "below_floor_since": self.below_floor_since,
            "surge_since": self.surge_since, "tripped": self.tripped,
            "detected_at": self.detected_at, "level": self.level,
            "cooldown_until": self.cooldown_until,
            "decided": None if self.decided is None else self.decided.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> PolicyState:
        if not data:
            return cls()
        services = {
            name: ServiceState(s["failures"], s["successes"], s["failing_since"],
                               [(float(t), bool(ok)) for t, ok in s["history"]],
                               s.get("last_detail", ""))
            for name, s in data.get("services", {}).items()
        }
        fields = {k: v for k, v in data.items() if k not in ("services", "decided")}
        decided = data.get("decided")
        return cls(services=services, decided=DecisionState(decided) if decided else None,
                   **fields)

    def observed(self, plan: FailoverPlan | None, now: float) -> dict[str, Any]:
        """The status's view (`status.policy`): the last decision's state, the trip and its
        level, times as RFC 3339, and per service whether it is available, its availability
        over the window (None before a probe), the probes that measured it and its run of
        failures or successes. With `plan` (the plan as it runs) also what the trigger
        compares: the availability of the core services and the services down; an invalid
        plan has no trigger, so its view leaves them out."""
        a = assess(plan, self, now) if plan is not None else None
        services: dict[str, dict[str, Any]] = {}
        for name, s in self.services.items():
            seen = {"available": name not in a.down} if a is not None else {}
            services[name] = {
                **seen,
                "availability": (round(100.0 * sum(ok for _, ok in s.history)
                                       / len(s.history), 1) if s.history else None),
                "probes": len(s.history), "consecutiveFailures": s.failures,
                "consecutiveSuccesses": s.successes, "failingSince": _stamp(s.failing_since)}
        out: dict[str, Any] = {
            "decided": None if self.decided is None else self.decided.value,
            "tripped": self.tripped, "level": self.level,
            "detectedAt": _stamp(self.detected_at), "cooldownUntil": _stamp(self.cooldown_until),
            "belowFloorSince": _stamp(self.below_floor_since),
            "surgeSince": _stamp(self.surge_since),
            "services": services, "signals": dict(self.signals)}
        if a is not None:
            out["availability"] = round(a.availability, 1)
            out["servicesDown"] = sorted(a.down)
        return out

    @classmethod
    def from_observed(cls, data: dict[str, Any] | None, at: float) -> PolicyState:
        """The state a replica takes over from the status (`observed`, as of `at`): the
        decision, a trip in progress (so it is neither forgotten nor tripped again), its
        level and detection time, the cooldown, the dwell under way and each service's run
        of failures or successes. The samples are not there, what they measured is: each
        service's probes and availability over the window come back as that many results
        at `at`, which leave the window together while the new leader's own probes fill
        it — so a leader change neither judges a service by its first probe or two (one
        failure is not 0 % availability) nor forgets a window of failures."""
        if not data:
            return cls()
        services = {}
        for name, s in (data.get("services") or {}).items():
            probes = int(s.get("probes") or 0)
            ok = round(probes * (s.get("availability") or 0.0) / 100.0)
            services[name] = ServiceState(
                int(s.get("consecutiveFailures") or 0), int(s.get("consecutiveSuccesses") or 0),
                _unstamp(s.get("failingSince")),
                [(at, True)] * ok + [(at, False)] * (probes - ok))
        decided = data.get("decided")
        return cls(services=services,
                   signals={k: float(v) for k, v in (data.get("signals") or {}).items()},
                   below_floor_since=_unstamp(data.get("belowFloorSince")),
                   surge_since=_unstamp(data.get("surgeSince")),
                   tripped=bool(data.get("tripped")),
                   detected_at=_unstamp(data.get("detectedAt")), level=data.get("level"),
                   cooldown_until=_unstamp(data.get("cooldownUntil")),
                   decided=DecisionState(decided) if decided else None)


def _stamp(at: float | None) -> str | None:
    """RFC 3339 to the millisecond: a replica that reads it back keeps the dwell and the
    cooldown to the millisecond."""
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _unstamp(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class Assessment:
    """What the samples say right now, before deciding."""

    availability: float  # percent, over core services
    down: dict[str, float]  # service -> down for (seconds)
    breached: dict[str, str]  # signal -> what it shows, for people
    tripping: bool  # a breached signal that trips the plan
    degraded: bool

    @property
    def lost(self) -> float:
        """The share of the core service lost over the window, percent."""
        return 100.0 - self.availability


def baseline(sig: Signal, state: PolicyState, now: float) -> float | None:
    """The signal's baseline at `now`: fixed, queried, or its rolling average (None: not
    known yet, or a threshold signal)."""
    if sig.baseline is not None:
        return sig.baseline
    if sig.baseline_query is not None:
        return state.baselines.get(sig.name)
    if sig.rolling_baseline is None:
        return None
    buckets = _window(sig, state, now)
    count = sum(b[2] for b in buckets)
    if not count or buckets[0][0] > now - sig.rolling_baseline / BUCKETS:
        return None  # less than one bucket of history is not an average yet
    return sum(b[1] for b in buckets) / count


def _window(sig: Signal, state: PolicyState, now: float) -> list[list[float]]:
    """The rolling baseline's buckets [start, sum, count] that overlap its window."""
    assert sig.rolling_baseline is not None
    width = sig.rolling_baseline / BUCKETS
    return [b for b in state.rolling.get(sig.name, [])
            if b[0] + width > now - sig.rolling_baseline]


def _roll(sig: Signal, state: PolicyState, value: float, at: float) -> None:
    """Add `value` to the signal's rolling average unless it breaches it; drop what left
    the window."""
    assert sig.rolling_baseline is not None
    reference = sig.reference(baseline(sig, state, at))
    buckets = _window(sig, state, at)
    if reference is None or not sig.breached(value, reference):
        start = at - at % (sig.rolling_baseline / BUCKETS)
        if buckets and buckets[-1][0] == start:
            buckets[-1] = [start, buckets[-1][1] + value, buckets[-1][2] + 1]
        else:
            buckets.append([start, value, 1])
    state.rolling[sig.name] = buckets


def _fold(plan: FailoverPlan, state: PolicyState, samples: list[Sample], now: float) -> None:
    services = {s.name for s in plan.spec.services}
    signals = {s.name: s for s in plan.spec.signals}
    queried = {s.baseline_name: s.name for s in plan.spec.signals
               if s.baseline_query is not None}
    for sample in sorted(samples, key=lambda s: s.at):
        sig = signals.get(sample.service)
        if sig is not None and sample.value is not None:
            state.signals[sample.service] = sample.value
            if sig.rolling_baseline is not None:
                _roll(sig, state, sample.value, sample.at)
            continue
        if sample.service in queried and sample.value is not None and sample.value > 0:
            state.baselines[queried[sample.service]] = sample.value
            continue
        if sample.service not in services:
            continue
        st = state.services.setdefault(sample.service, ServiceState())
        st.history.append((sample.at, sample.ok or sample.inconclusive))
        if sample.inconclusive:  # the controller was late: no evidence of an outage
            continue
        if sample.ok:
            st.successes, st.failures, st.failing_since = st.successes + 1, 0, None
        else:
            st.failures, st.successes = st.failures + 1, 0
            st.failing_since = st.failing_since if st.failing_since is not None else sample.at
            st.last_detail = sample.detail[:200]
    horizon = now - plan.spec.trigger.window
    for st in state.services.values():
        st.history = [(t, ok) for t, ok in st.history if t >= horizon]


def assess(plan: FailoverPlan, state: PolicyState, now: float) -> Assessment:
    trig = plan.spec.trigger
    down: dict[str, float] = {}
    for name, st in state.services.items():
        if st.failures >= trig.consecutive_failures and st.failing_since is not None:
            down[name] = now - st.failing_since
    ratios = []
    for svc in plan.spec.services:
        if not svc.core:
            continue
        known = state.services.get(svc.name)
        if svc.name in down:
            ratios.append(0.0)
        elif known and known.history:
            ratios.append(sum(ok for _, ok in known.history) / len(known.history))
        else:
            ratios.append(1.0)  # no data yet is not evidence of an outage
    availability = 100.0 * sum(ratios) / len(ratios)
    breached, tripping = {}, False
    for sig in plan.spec.signals:
        value = state.signals.get(sig.name)
        base = baseline(sig, state, now)
        reference = sig.reference(base)
        if value is None or reference is None or not sig.breached(value, reference):
            continue
        breached[sig.name] = _breach(sig, value, base)
        tripping = tripping or sig.trips
    degraded = bool(down) or availability < trig.availability_floor or bool(breached)
    return Assessment(availability, down, breached, tripping, degraded)


def _breach(sig: Signal, value: float, base: float | None) -> str:
    """'complaints 80 % above baseline 100 (now 180)', 'satisfaction 3.2 < 3.5'."""
    if base is None:
        return f"{sig.name} {value:g} {'>' if sig.direction == 'above' else '<'} " \
               f"{sig.threshold:g}"
    kind = ("rolling average" if sig.rolling_baseline is not None else
            "queried baseline" if sig.baseline_query is not None else "baseline")
    pct = 100.0 * abs(value / base - 1)
    return f"{sig.name} {pct:.0f} % {sig.direction} {kind} {base:.4g} (now {value:g})"


def level_for(rules: list[LevelRule], plan: FailoverPlan, a: Assessment) -> int:
    total = len(plan.spec.services)
    core = {s.name for s in plan.spec.services if s.core}
    unavailable = 100.0 * len(a.down) / total
    for rule in sorted(rules, key=lambda r: r.level):
        conditions = [
            rule.all_services_down and len(a.down) == total,
            rule.unavailable_at_least is not None and unavailable >= rule.unavailable_at_least,
            rule.lost_over is not None and a.lost > rule.lost_over + 1e-9,
            rule.core_down_for is not None
            and any(t >= rule.core_down_for for s, t in a.down.items() if s in core),
            rule.any_down_for is not None and any(t >= rule.any_down_for for t in a.down.values()),
            rule.signal_surge and bool(a.breached),
            any(name in a.breached for name in rule.signals),
        ]
        if any(conditions) or not rule.has_condition():
            return rule.level
    return max(r.level for r in rules)


def describe(plan: FailoverPlan, state: PolicyState, a: Assessment) -> str:
    trig = plan.spec.trigger
    parts = []
    for name, secs in sorted(a.down.items()):
        st = state.services[name]
        why = f" ({st.last_detail})" if st.last_detail else ""
        parts.append(f"{name} down: {st.failures} failed probes in a row "
                     f"(threshold {trig.consecutive_failures}) for {secs:.1f} s{why}")
    below = a.availability < trig.availability_floor
    cmp = "<" if below else ">="
    parts.append(f"availability {a.availability:.0f} % {cmp} {trig.availability_floor:.0f} %")
    if below:  # what pulled it down, besides the services down
        core = {s.name for s in plan.spec.services if s.core}
        for name in sorted(core & set(state.services) - set(a.down)):
            seen = state.services[name]
            failed = sum(not ok for _, ok in seen.history)
            if failed:
                parts.append(f"{name}: {failed} of {len(seen.history)} probes in the window "
                             "failed")
    parts += [a.breached[name] for name in sorted(a.breached)]
    return "; ".join(parts)


def evaluate(plan: FailoverPlan, prior: PolicyState, samples: list[Sample], now: float
             ) -> tuple[Decision, PolicyState]:
    state = PolicyState.from_json(prior.to_json())  # never mutate the caller's state
    _fold(plan, state, samples, now)
    decided, level, sentence = _decide(plan, state, now)
    changed = decided is not state.decided
    state.decided = decided
    return Decision(decided, level, sentence, now, changed), state


def _decide(plan: FailoverPlan, state: PolicyState, now: float
            ) -> tuple[DecisionState, int | None, str]:
    """The decision on the folded `state` (updated in place): its state, level, sentence."""
    trig = plan.spec.trigger
    a = assess(plan, state, now)
    below = a.availability < trig.availability_floor
    state.below_floor_since = (state.below_floor_since or now) if below else None
    state.surge_since = (state.surge_since or now) if a.tripping else None
    facts = describe(plan, state, a)

    if state.tripped:
        level = level_for(plan.spec.levels, plan, a)
        state.level = min(level, state.level or level)
        core = [s.name for s in plan.spec.services if s.core]
        recovered = all(state.services.get(n, ServiceState()).successes >= trig.clear_after
                        for n in core)
        if recovered and not below and not a.tripping:
            state.tripped, state.detected_at = False, None
            return (DecisionState.CLEARED, state.level,
                    f"cleared: core services {trig.clear_after}+ probes ok in a row; {facts}")
        return (DecisionState.STILL_TRIPPED, state.level,
                f"still tripped: {facts}; level {state.level}")

    since = [t for t in (state.below_floor_since, state.surge_since) if t is not None]
    held = min(since) if since else None
    if held is not None and now - held >= trig.dwell:
        if state.cooldown_until is not None and now < state.cooldown_until:
            return (DecisionState.HELD, None,
                    f"thresholds exceeded ({facts}) but the cooldown holds automatic "
                    f"failover for {state.cooldown_until - now:.0f} s more")
        state.tripped, state.detected_at = True, held
        state.level = level_for(plan.spec.levels, plan, a)
        return (DecisionState.TRIPPED, state.level,
                f"tripped: {facts} for {now - held:.1f} s; level {state.level}")
    if a.degraded:
        waiting = (f"; trips if it lasts {trig.dwell:g} s (now {now - held:.1f} s)"
                   if held is not None else "")
        return DecisionState.DEGRADED, None, f"degraded: {facts}{waiting}"
    return DecisionState.HEALTHY, None, f"healthy: {facts}"


def start_cooldown(state: PolicyState, plan: FailoverPlan, now: float) -> PolicyState:
    """Called when a failover run starts: no automatic failover again before the cooldown."""
    new = PolicyState.from_json(state.to_json())
    new.cooldown_until = now + plan.spec.trigger.cooldown
    return new


def rearm(state: PolicyState) -> PolicyState:
    """Called when a run ends back on the primary (a failback, a failed run): start again
    from the samples that come next, keeping only the cooldown. A primary that is still
    failing is then detected afresh (failed probes in a row, then the dwell) and trips
    again once the cooldown has passed, instead of staying "still tripped" with no run;
    samples from before the run (another site served them, or the outage that is over)
    can neither trip it again at once nor hold it tripped. The last decision's state stays:
    only a change of state is news, and so do the signals' baselines (rolling averages and
    queried values measure normal days, not the incident)."""
    return PolicyState(cooldown_until=state.cooldown_until, decided=state.decided,
                       baselines=dict(state.baselines),
                       rolling={k: [list(b) for b in v] for k, v in state.rolling.items()})


def shift(state: PolicyState, seconds: float) -> PolicyState:
    """The state with every timestamp moved by `seconds`: after the wall clock jumped by
    that much, an outage's duration, the dwell and the cooldown stay what they were (a
    clock set back an hour neither hides a 10-minute outage nor skips the dwell)."""
    def moved(t: float | None) -> float | None:
        return None if t is None else t + seconds

    new = PolicyState.from_json(state.to_json())
    for st in new.services.values():
        st.failing_since = moved(st.failing_since)
        st.history = [(t + seconds, ok) for t, ok in st.history]
    for buckets in new.rolling.values():
        for bucket in buckets:
            bucket[0] += seconds
    new.below_floor_since = moved(new.below_floor_since)
    new.surge_since = moved(new.surge_since)
    new.detected_at = moved(new.detected_at)
    new.cooldown_until = moved(new.cooldown_until)
    return new

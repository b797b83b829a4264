"""Recorded samples: what each plan decided on during an incident, kept in the journal
(its `samples` table) so a real incident can be exported as a trace and replayed
(`failoverctl trace export RUN`, then `failoverctl simulate`).

Why it works this way:
- **A quiet plan writes nothing**: while the decisions are healthy, the samples stay in a
  ring in memory that covers the trigger's window and dwell and the failures in a row
  that make a service down (`horizon`). The first decision that is not healthy writes the
  ring, then every sample until the decisions are healthy again, so the record of an
  incident starts a full window before it and replays to the same decision.
- **An incident costs few writes**: its samples are written with each decision that is
  news (a change of state, a trip, a clear: when the journal records a decision anyway)
  and otherwise every `FLUSH` seconds, not every cycle; a controller killed mid-incident
  loses at most that much of the record, never a decision.
- **Bounded and rotated**: at most `KEEP` samples per plan; each write drops the oldest
  beyond it. A sample written twice (a restarted controller writing its ring again) is
  one row (`UNIQUE (plan, service, at)`).
- **Only evidence is kept**: an inconclusive sample (a timeout while the controller was
  late, excused by the probe scheduler) is not written: a row with ok = 0 would read as a
  failure and one with ok = 1 as a success, and it was neither. A replay judges the
  window by the conclusive samples only: more strictly than the live policy, which
  counted them as no evidence of an outage.
- A sample's detail (a probe's error text) is not kept: it may hold a secret that no
  backend has revealed yet, so redaction could not know it; the decision never reads it.

It writes through the journal file's own transactions (`JournalFile._tx`), so the
journal's rules (one short transaction per write, a full disk said so) hold here too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from controller.journal import Journal, Run
from controller.model import Sample
from controller.plan import FailoverPlan
from controller.probes.trace import Expectation, Trace

KEEP = 200_000  # samples per plan: about 4 h of 3 services probed every 200 ms
FLUSH = 10.0  # seconds of an incident's samples held in memory between writes


def horizon(plan: FailoverPlan) -> float:
    """How far back the samples behind a decision reach: the window, the dwell and the
    failures in a row of the slowest service (or signal)."""
    trig = plan.spec.trigger
    slowest = max([s.interval for s in plan.spec.services]
                  + [s.interval for s in plan.spec.signals])
    return trig.window + trig.dwell + trig.consecutive_failures * slowest


class SampleLog:
    """The samples of one plan: a ring while healthy, the journal during an incident."""

    def __init__(self, journal: Journal, plan: str):
        self.journal, self.plan = journal, plan
        self._ring: deque[Sample] = deque()  # not written yet
        self._open = False  # an incident's samples are being kept
        self._flushed = float("-inf")

    def add(self, plan: FailoverPlan, samples: Iterable[Sample], now: float, *,
            incident: bool, news: bool) -> None:
        """Take a cycle's `samples`, decided on as not healthy (`incident`) or healthy,
        by a decision that is `news` or not."""
        self._ring.extend(samples)
        if not incident and not self._open:
            oldest = now - horizon(plan)
            while self._ring and self._ring[0].at < oldest:
                self._ring.popleft()
            return
        if news or not incident or now - self._flushed >= FLUSH:
            if self._ring:
                self.write(list(self._ring))
                self._ring.clear()
            self._flushed = now
        self._open = incident

    def write(self, samples: list[Sample]) -> None:
        rows = [(self.plan, s.at, s.service, int(s.ok), s.latency, s.value)
                for s in samples if not s.inconclusive]
        with self.journal._tx() as db:
            db.executemany("INSERT OR IGNORE INTO samples (plan, at, service, ok, latency, "
                           "value) VALUES (?,?,?,?,?,?)", rows)
            db.execute("DELETE FROM samples WHERE plan=? AND id <= (SELECT max(id) FROM "
                       "samples WHERE plan=?) - ?", (self.plan, self.plan, KEEP))


def recorded(journal: Journal, plan: str, since: float, until: float) -> list[Sample]:
    """The plan's recorded samples with `since <= at <= until`, oldest first."""
    rows = journal._all("SELECT * FROM samples WHERE plan=? AND at BETWEEN ? AND ? "
                        "ORDER BY at, service", (plan, since, until))
    return [Sample(r["service"], bool(r["ok"]), r["at"], latency=r["latency"],
                   value=r["value"]) for r in rows]


class NothingRecorded(LookupError):
    """The run's window has no recorded samples; the message says why."""


def export(journal: Journal, run: Run, plan: FailoverPlan) -> Trace:
    """The run's window as a trace: the recorded samples from `horizon` before its
    detection to its end. A run the policy started (a trip) is labelled with what it did:
    tripped when the run started, at its first level, reaching its last; a requested run
    carries no label. A replay runs a cycle on each failed sample as the live loop did,
    but otherwise ticks once a second (`simulate --every`), so the label allows a trip
    up to two ticks later (one to see the floor crossed, one to see the dwell out: a trip
    on signals, which wake no cycle) and one earlier."""
    since = run.detected_at - horizon(plan)
    until = run.finished_at if run.finished_at is not None else run.started_at
    samples = recorded(journal, run.plan, since, max(until, run.started_at))
    if not samples:
        raise NothingRecorded(
            f"run {run.id}: no samples recorded between detection - {horizon(plan):g} s "
            "and its end (recorded only by a controller that has this version, during "
            f"an incident, and at most {KEEP} per plan)")
    start = samples[0].at
    expect = None
    if run.requested_by == "controller" and run.kind == "failover":
        first = _first_level(journal, run)
        tripped = round(run.started_at - start, 3)
        expect = Expectation(trip=True, by=tripped + 2.0, not_before=max(0.0, tripped - 1.0),
                             level=first, peak_level=run.level)
    return Trace(name=run.id, start=start, samples=samples, expect=expect,
                 description=f"recorded: {run.reason}")


def _first_level(journal: Journal, run: Run) -> int | None:
    """The level the run started at: before its first rise, if it rose."""
    rises = [a["detail"] for a in journal.audit_trail(run_id=run.id)
             if a["action"] == "escalate"]
    if not rises:
        return run.level
    before = str(rises[0]).split(" ")[1]  # "level 3 -> 2"
    return int(before) if before.isdigit() else None

"""Which notices a run's events call for, decided once per run, status text and route,
even across a restart, and handed to the outbox that sends them off the step path.

Each decided notice is written to the audit as `notify-pending` (with its dedup key and
status) before the outbox gets it; the outbox audits `notify` or `notify-failed`. A new
lease holder replays what was decided and never sent, and decides what a controller
that died never got to decide. A notice never delays or fails a run.

When the plan keeps records (`spec.records`), a failover run's incident record
(`controller.records.incident`) is written from here too: on each decided notice (the
news of a run) and on every cycle (`wake`), so a run that waits hours for a person still
gets its record within its target; each notice says where the record is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from controller import notices
from controller.engine.core import Core
from controller.engine.store import Store
from controller.fencing import LostLease
from controller.journal import Run
from controller.model import TERMINAL
from controller.outbox import Item, Outbox
from controller.records.incident import IncidentRecords, location
from controller.records.store import open_store
from controller.secrets import Secrets, redact

log = logging.getLogger(__name__)


class Notices:
    def __init__(self, core: Core, store: Store, outbox: Callable[[], Outbox],
                 token: Callable[[], int], *, incidents: IncidentRecords | None = None,
                 secrets: Secrets | None = None):
        self.core, self.store = core, store
        self.outbox, self.token = outbox, token
        self.incidents = incidents or _incidents(core, secrets)

    def notify(self, run: Run, status: str, *, attempted: set[str] | None = None) -> None:
        """Decide the notices of `status` for the routes of the run's level
        (`spec.notifications`, exact level match) not decided yet, and hand them to the
        outbox. The notice carries the services down now, the estimated recovery and a
        link to the run. `attempted` (the keys decided so far) is updated in place."""
        journal, plan = self.core.journal, self.core.plan
        current = journal.run(run.id) or run
        status = redact(status)
        if attempted is None:
            attempted = notices.decided(journal.audit_trail(run_id=run.id))
        todo = [(rule, notices.dedup_key(run.id, status, rule))
                for rule in notices.routes(plan, current.level)]
        todo = [(rule, key) for rule, key in todo if key not in attempted]
        if not todo:
            return
        now = self.core.clock.now()
        down = self.store.down(now)
        record = self.incidents.link(current) if self.incidents else ""
        base = notices.compose(plan, current, status, steps=journal.steps(run.id),
                               down=down, now=now, record=record)
        for rule, key in todo:
            attempted.add(key)
            journal.audit(at=now, actor="controller", action=notices.PENDING, plan=plan.name,
                          run_id=run.id, detail=notices.pending_detail(rule, key, status),
                          keep=(notices.route(rule), notices.tag(key)))
            self.outbox().put(Item(current, rule, key,
                                   replace(base, recipients=tuple(rule.recipients))))
        self._record(lambda records: records.touch(journal.run(run.id) or current, down))

    def steps(self, run: Run) -> None:
        """One update per finished step, in order: steps this engine just ran, human steps
        closed with `failoverctl done`, and steps recorded just before a restart; and,
        while the run goes on, one per question a step asked a person mid-step
        (`notices.person_needed`: nobody else would know the run waits for them)."""
        journal = self.core.journal
        current = journal.run(run.id) or run
        if not notices.routes(self.core.plan, current.level):
            return
        attempted = notices.decided(journal.audit_trail(run_id=run.id))
        for rec in journal.steps(run.id):
            if rec.status in TERMINAL:
                self.notify(current, notices.step_status(rec), attempted=attempted)
            elif current.finished_at is None and (asking := notices.person_needed(rec)):
                self.notify(current, asking, attempted=attempted)

    def wake(self) -> None:
        """On the first cycle under a new lease token (a started or restarted controller,
        a new holder), send what the journal says was never sent; then let the outbox
        go on (it pauses while another controller holds the plan)."""
        token, outbox = self.token(), self.outbox()
        if outbox.token != token:
            outbox.token = token
            try:
                self._replay()
            except LostLease:
                raise
            except Exception:  # a notice never stops a failover: said loudly, then on
                log.exception("%s: could not replay the notices left unsent", self.core.name)
        outbox.wake()
        self._record(lambda records: records.tick(self.store.down(self.core.clock.now())))

    def _record(self, update: Callable[[IncidentRecords], None]) -> None:
        """Bring the incident record up to date, when the plan keeps records; a failure is
        logged and the next cycle tries again (a record never stops a failover)."""
        if self.incidents is None:
            return
        try:
            update(self.incidents)
        except LostLease:
            raise
        except Exception:
            log.exception("%s: could not bring the incident record up to date",
                          self.core.name)

    def _replay(self) -> None:
        """Send again what a controller decided and never sent (`notify-pending` with no
        `notify`/`notify-failed`), and decide what it never got to decide (a run written,
        then a crash before its start, level or end notice was): for the active run and
        runs that finished within `notices.REPLAY_WITHIN`. Older ones are given up, in
        the audit, rather than told hours late."""
        journal, plan = self.core.journal, self.core.plan
        trail = journal.audit_trail(plan=plan.name)
        now = self.core.clock.now()
        rules = plan.spec.notifications
        for row in notices.undelivered(trail):
            parsed = notices.parse_pending(str(row["detail"]))
            run = journal.run(str(row["run_id"])) if row["run_id"] else None
            if parsed is None or run is None or parsed[1] in self.outbox().known:
                continue
            where, key, status = parsed
            rule = next((r for r in rules if notices.dedup_key(run.id, status, r) == key),
                        None) or next((r for r in rules if notices.route(r) == where), None)
            stale = run.finished_at is not None and now - run.finished_at > notices.REPLAY_WITHIN
            if rule is None or stale:
                why = ("its route is no longer in the plan" if rule is None else
                       f"its run finished {notices.span(now - (run.finished_at or now))} ago")
                journal.audit(at=now, actor="controller", action="notify-failed",
                              plan=plan.name, run_id=run.id,
                              detail=f"{where} failed: not sent after a restart: {why} "
                                     f"{notices.tag(key)}", keep=(where, notices.tag(key)))
                continue
            notice = notices.compose(plan, run, status, steps=journal.steps(run.id),
                                     down=self.store.down(now), now=now,
                                     record=self.incidents.link(run) if self.incidents else "")
            self.outbox().put(Item(run, rule, key, replace(
                notice, recipients=tuple(rule.recipients), at=row["at"])))
        decided = notices.decided(trail)
        for run in reversed(journal.runs(plan.name, limit=3)):
            if run.finished_at is not None and now - run.finished_at > notices.REPLAY_WITHIN:
                continue
            for status in notices.lifecycle(plan, run, trail):
                status = redact(status)
                if not any(notices.dedup_key(run.id, status, r) in decided for r in rules):
                    self.notify(run, status, attempted=decided)


def _incidents(core: Core, secrets: Secrets | None) -> IncidentRecords | None:
    """The plan's incident records, when it keeps records (the store is opened by the
    writer, at its first write, its credentials read with `secrets`: a store that cannot
    be opened is retried, never fatal)."""
    spec = core.plan.spec.records
    if spec is None:
        return None
    return IncidentRecords(core.plan, core.journal,
                           partial(open_store, spec, secrets=secrets),
                           now=core.clock.now, where=partial(location, spec))

"""The `db-failback` step: bring the database home after a promotion without losing a
write committed at the promoted node, and never with two writable primaries.

Owns the order of a database failback; the `database` backend (`controller.db`) owns how
each node is reached. A failback run starts with this step whenever the incident promoted
a standby (`controller.failback`), before any traffic or DNS revert, and carries the
`promote` step's frozen definition: its `primary` is the node to bring home ("home",
dc-a), its `standby` the node promoted during the incident ("away", dc-b), its
`failback` settings how. In order, each phase timed (a rebuild's stop, copy and start
too) and the LSNs at each stage in the evidence:

1. **rebuild** home as a streaming standby of away: stop it cleanly, then choose how to
   copy (`Copy`, in the evidence with the figures). First from SQL (`estimate`): the
   WAL away wrote since the fork, from where home's WAL ends (at or past the fork) to
   away's LSN, at most what away generated (`pg_stat_wal`: a segment switch's padding
   is not written WAL), against its databases' size. A rewind moves at least that WAL
   twice: copies it (the source's pg_wal is copied whole, or it is streamed) and
   replays it; a base backup copies the databases once. So when it is half their size
   or more, a base backup is taken straight away (`wal-since-fork-half`), with no dry
   run (for a crashed home, no single-user crash recovery either). Else `pg_rewind
   --dry-run` says how many MB a rewind would copy of the source's size; a rewind that
   would copy half of it or more is slower than a fresh base backup
   (`rewind-copies-half`), so that is taken; else `pg_rewind` onto away's timeline. A
   rewind that cannot be done (`rewind-failed`), a rewound node that does not start in time
   (`rewound-cannot-start`, the database backend's `startTimeout`), or one that starts
   but replays nothing more for `failback.stall` seconds before it has caught up
   (`rewound-cannot-stream`; both: the WAL since the fork is gone at the source) falls
   back to the base backup (the old data kept aside). Then
   standby.signal + primary_conninfo + `primary_slot_name` (the slot the promotion made
   on away for home, `failback.slot`, made now when it is missing: it keeps the WAL since
   the fork however long the incident wrote), and start it; a slot of that name left on
   a rewound node from when it was a primary is dropped (a base backup copies none). A
   home that takes writes (unfenced by someone) is refused (`two-primaries`): a rewind
   would discard them.
2. **catchUp**: wait (`failback.catchUp`) until home streams and has replayed the LSN
   away was at when the wait began (away read once: the wait ends under a steady stream
   of writes): lag 0, verified by LSN. When it cannot, the step ends `home-not-caught-up`
   and nothing is switched: away still takes the writes.
3. **fence** away (`failback.fence`: a clean stop, or read-only with every session ended),
   then **replay**: wait until home has replayed away's last LSN (`replay-timeout`
   otherwise: away is unfenced and takes the writes again, nothing switched).
4. **promote** home (`pg_promote`), confirmed out of recovery on a later timeline.
5. **demote**: home gets the slot for away; away becomes home's standby (stopped,
   rebuilt as above, started with standby.signal) and streams from it through the slot,
   lag 0 (`away-not-streaming` otherwise).

An incident whose promote step failed may not have promoted: when away is still in
recovery on the timeline it had, the step changes nothing and says so (`skipped`).

Resumable: `prepare` journals away's timeline before anything changes (the incident's
timeline). A resumed or retried attempt reads the nodes and skips what is done: home out
of recovery on a later timeline is the switchover done (on to the demote); home in
recovery on the incident's timeline is the rebuild done; away no longer writable is the
fence done (fencing again is a no-op that still reads away's last LSN). Not revertible,
like the promotion it undoes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any, TypeVar

from controller import fencing
from controller.db import (
    Database,
    Node,
    NodeState,
    RewindFailed,
    RewindSize,
    StartFailed,
    lsn_text,
    parse_lsn,
    state_or_none,
)
from controller.model import Evidence, PermanentError
from controller.plan import FailoverPlan, Step
from controller.schema import Strict
from controller.steps import Change, StepContext, StepKind, seconds
from controller.steps.promote import KIND as PROMOTE
from controller.steps.promote import PromoteParams, Refused, database_of
from controller.steps.revert import RevertOf

POLL = 0.05  # seconds between readings while a node catches up
T = TypeVar("T")


class Copy(enum.StrEnum):
    """Why a rebuild copied what it did."""

    REWIND = "rewind-copies-less"  # pg_rewind: it copies less than half the source
    # a base backup, no dry run: SQL says the WAL since the fork is half the databases or more
    WAL_HALF = "wal-since-fork-half"
    COPIES_HALF = "rewind-copies-half"  # a base backup: a rewind would copy half or more
    REWIND_FAILED = "rewind-failed"  # a base backup: pg_rewind cannot rewind the node
    CANNOT_START = "rewound-cannot-start"  # a base backup: the rewound node did not start
    CANNOT_STREAM = "rewound-cannot-stream"  # a base backup: it started, replays nothing


class DbFailbackParams(Strict):
    of: RevertOf  # the promote step of the incident
    definition: dict[str, Any]  # its frozen definition


class DbFailback(StepKind[DbFailbackParams]):
    action = "db-failback"
    Params = DbFailbackParams
    planned = False

    def _original(self, step: Step) -> tuple[Step, PromoteParams]:
        """The promote step of the incident, as it was frozen, and its params."""
        original = Step.model_validate(self.args(step).definition)
        return original, PROMOTE.args(original)

    def describe(self, step: Step, plan: FailoverPlan) -> str:
        original, p = self._original(step)
        return (f"bring the database home: rebuild {p.primary.describe()} as a standby of "
                f"{p.standby.describe()}, fence {p.standby.describe()} "
                f"({p.failback.fence.value}), promote {p.primary.describe()} via "
                f"{original.backend}")

    def plan(self, step: Step, ctx: StepContext) -> Change:
        """Read-only: both nodes as they are, for a dry run."""
        original, p = self._original(step)
        db = database_of(original, ctx)
        said = []
        for node in (p.standby, p.primary):
            found = state_or_none(db, node)
            said.append(f"{node.describe()} " + (
                "does not answer" if found is None else
                f"{'standby' if found.in_recovery else 'primary'} on timeline "
                f"{found.timeline} at {lsn_text(found.lsn)}"
                + (", read-only" if found.read_only else "")))
        return Change(summary=" -> ".join(said) + f": {p.primary.describe()} back as the "
                      f"primary, {p.standby.describe()} its standby")

    def prepare(self, step: Step, ctx: StepContext) -> Evidence:
        """Away as it is before anything changes: the incident's timeline."""
        original, p = self._original(step)
        away = database_of(original, ctx).state(p.standby)
        return {"awayBefore": {"timeline": away.timeline, "lsn": lsn_text(away.lsn),
                               "writable": away.writable}}

    def apply(self, step: Step, ctx: StepContext, change: Evidence) -> Evidence:
        original, p = self._original(step)
        run = _Failback(database_of(original, ctx), p, f"before-failback-{ctx.run_id}")
        before = change["awayBefore"]
        incident = int(before["timeline"])
        away = state_or_none(run.db, p.standby)
        if not before["writable"]:
            away = away or run.db.state(p.standby)  # raises Unreachable: it must be read
            if away.in_recovery and away.timeline == incident:
                return {**run.out, "skipped": f"{p.standby.describe()} was never promoted "
                        "(in recovery on its timeline): there is nothing to bring home"}
        home = state_or_none(run.db, p.primary)
        run.lsns("start", home=home, away=away)
        if home is not None and not home.in_recovery and home.timeline > incident:
            run.out["switchover"] = "found done already"
        else:
            run.switchover(home, away, incident)
        run.demote()
        return run.out

    def facts(self, evidence: Evidence) -> list[str]:
        if evidence.get("skipped"):
            return [str(evidence["skipped"])]
        if "lsns" not in evidence:
            return []
        out = [f"database home on {evidence.get('home')} (timeline "
               f"{evidence.get('timeline', '-')}); {evidence.get('away')} streams from it"]
        for name in ("rebuild", "demoted"):
            how = evidence.get(name)
            if isinstance(how, dict):
                guess = how.get("estimate")
                figures = (f"; the WAL since the fork is {guess['walMb']} MB, of "
                           f"{guess['databasesMb']} MB of databases" if guess else "")
                figures += (f"; a rewind would copy {how['rewindMb']} of "
                            f"{how['sourceMb']} MB" if "rewindMb" in how else "")
                out.append(f"{name}: {how.get('method')} ({how.get('why')}{figures})"
                           + (f"; pg_rewind failed: {how['rewindError']}"
                              if how.get("rewindError") else "")
                           + (f"; the rewound node: {how['startError']}"
                              if how.get("startError") else ""))
        out.append("LSNs: " + "; ".join(
            f"{stage} " + ", ".join(f"{k} {v}" for k, v in lsns.items())
            for stage, lsns in evidence["lsns"].items()))
        phases = evidence.get("phases", {})
        if phases:
            out.append("phases: " + ", ".join(f"{k} {seconds(v)}" for k, v in phases.items()))
        return out


KIND = DbFailback()


class _Failback:
    """One attempt: the nodes, the settings, and the evidence as it grows."""

    def __init__(self, db: Database, p: PromoteParams, aside: str):
        self.db, self.p, self.aside = db, p, aside
        self.home, self.away = p.primary, p.standby
        self.out: Evidence = {"home": self.home.describe(), "away": self.away.describe(),
                              "lsns": {}, "phases": {}}
        self._at = time.monotonic()

    def done(self, phase: str, **lsns: int) -> None:
        now = time.monotonic()
        self.out["phases"][phase] = round(now - self._at, 3)
        self._at = now
        if lsns:
            self.out["lsns"][phase] = {k: lsn_text(v) for k, v in lsns.items()}

    def lsns(self, stage: str, **nodes: NodeState | None) -> None:
        """Each node's LSN at `stage` (a node that does not answer: none)."""
        self.out["lsns"][stage] = {k: None if n is None else lsn_text(n.lsn)
                                   for k, n in nodes.items()}

    def switchover(self, home: NodeState | None, away: NodeState | None,
                   incident: int) -> None:
        p, db = self.p, self.db
        if away is not None and away.writable:
            if home is not None and home.writable:
                raise Refused("two-primaries", f"{self.home.describe()} takes writes while "
                              f"{self.away.describe()} is the primary: rebuilding it would "
                              "discard what it took since; decide by hand which writes to "
                              "keep, fence it, then run the failback again")
            fencing.check()
            self.out["slots"] = {"away": db.create_slot(self.away, p.failback.slot)}
            if home is None or not (home.in_recovery and home.timeline == away.timeline):
                self.out["rebuild"] = self.rebuild(self.home, source=self.away)
            self.done("rebuild")
            caught = _streamed_up(db, self.home, self.away, p.failback.catch_up)
            if caught is None:
                raise Refused("home-not-caught-up", f"{self.home.describe()} did not "
                              f"stream up to {self.away.describe()} within "
                              f"{p.failback.catch_up:g} s (params.failback.catchUp of the "
                              "promote step): nothing was switched, "
                              f"{self.away.describe()} still takes the writes")
            self.done("catchUp", home=caught[0].lsn, away=caught[1].lsn)
        elif home is None or not (home.in_recovery and home.timeline == incident):
            raise Refused("away-not-primary", f"{self.away.describe()} does not take writes "
                          f"and {self.home.describe()} is not its standby: the database is "
                          "in neither state a failback starts from or resumes; nothing was "
                          "changed")
        fencing.check()
        fence = db.fence(self.away, method=p.failback.fence)
        self.out["fence"] = fence
        if not fence.get("lastLsn"):
            raise PermanentError(f"{self.away.describe()} is fenced but its last LSN cannot "
                                 "be read: home is not promoted")
        last = parse_lsn(fence["lastLsn"])
        self.done("fence", away=last)
        replayed = _wait(lambda: db.state(self.home), lambda s: s.lsn >= last,
                         p.failback.catch_up)
        if replayed is None:
            fencing.check()
            db.unfence(self.away, method=p.failback.fence)
            raise Refused("replay-timeout", f"{self.home.describe()} did not replay "
                          f"{self.away.describe()}'s last LSN {lsn_text(last)} within "
                          f"{p.failback.catch_up:g} s: nothing was switched, "
                          f"{self.away.describe()} was unfenced and takes the writes again; "
                          "run the failback again once it streams")
        self.done("replay", home=replayed.lsn)
        fencing.check()
        after = db.promote(self.home, timeout=p.timeouts.promote).state
        if after.in_recovery or after.timeline <= replayed.timeline:
            raise PermanentError(f"promotion of {self.home.describe()} did not land: in "
                                 f"recovery {after.in_recovery}, timeline {after.timeline}")
        self.done("promote", home=after.lsn)

    def demote(self) -> None:
        db = self.db
        home = db.state(self.home)
        self.out["timeline"] = home.timeline
        fencing.check()
        self.out.setdefault("slots", {})["home"] = db.create_slot(self.home,
                                                                 self.p.failback.slot)
        away = state_or_none(db, self.away)
        if away is None or not (away.in_recovery and away.timeline == home.timeline):
            self.out["demoted"] = self.rebuild(self.away, source=self.home)
        streaming = _streamed_up(db, self.away, self.home, self.p.failback.catch_up)
        if streaming is None:
            raise Refused("away-not-streaming", f"the database is home on "
                          f"{self.home.describe()}, but {self.away.describe()} does not "
                          f"stream from it within {self.p.failback.catch_up:g} s: run the "
                          "failback again to resume, or rebuild the standby by hand")
        self.done("demote", home=streaming[1].lsn, away=streaming[0].lsn)

    def rebuild(self, node: Node, *, source: Node) -> Evidence:
        """Make `node` a streaming standby of `source`: stop, choose (`_choose`), rewind
        or base backup, follow through the failback slot (a rewound node that does not
        start: stopped, then a base backup); the seconds each part took."""
        db, slot = self.db, self.p.failback.slot
        seconds: dict[str, float] = {}
        at = time.monotonic()

        def part(name: str) -> None:
            nonlocal at
            now = time.monotonic()
            seconds[name] = round(now - at + seconds.get(name, 0.0), 3)
            at = now

        fencing.check()
        stopped = db.stop(node)
        part("stop")
        how = self._choose(node, source, _wal_end(stopped))
        part("choose")
        if how["why"] is Copy.REWIND:
            try:
                fencing.check()
                how.update(db.rewind(node, source=source))
            except RewindFailed as exc:
                how.update(why=Copy.REWIND_FAILED, rewindError=str(exc))
        if how["why"] is not Copy.REWIND:
            how.update(self._basebackup(node, source))
        part("copy")
        why = self._follow_rewound(node, source) if how["why"] is Copy.REWIND else None
        if why is not None:
            fencing.check()
            db.stop(node)  # still recovering, waiting for WAL it will not get
            part("start")
            how.update(why=why[0], startError=why[1], **self._basebackup(node, source))
            part("copy")
        if how["why"] is Copy.REWIND:  # it keeps the slots its old data held
            fencing.check()
            dropped = db.drop_slot(node, slot)  # left from when it was a primary
        else:  # a base backup copies no slot
            fencing.check()
            db.follow(node, source=source, slot=slot)
            dropped = {"already": True}
        part("start")
        return {**how, "method": "pg_rewind" if how["why"] is Copy.REWIND else
                "pg_basebackup", "why": how["why"].value, "lastLsn": stopped.get("lastLsn"),
                "staleSlotDropped": not dropped["already"], "seconds": seconds}

    def _follow_rewound(self, node: Node, source: Node) -> tuple[Copy, str] | None:
        """Start the rewound `node` as `source`'s standby and see it stream: None once it
        has replayed the LSN `source` was at, else why not (it did not start; or its
        replay did not move for `failback.stall` seconds)."""
        try:
            fencing.check()
            self.db.follow(node, source=source, slot=self.p.failback.slot)
        except StartFailed as exc:
            return Copy.CANNOT_START, str(exc)
        stall, ahead = self.p.failback.stall, self.db.state(source)
        seen: NodeState | None = None
        moved = time.monotonic()
        while True:
            now = state_or_none(self.db, node)
            if now is not None and _caught_up((now, ahead)):
                return None
            if now is not None and (seen is None or now.lsn > seen.lsn):
                seen, moved = now, time.monotonic()
            elif time.monotonic() - moved >= stall:
                at = "-" if seen is None else lsn_text(seen.lsn)
                return Copy.CANNOT_STREAM, (
                    f"{node.describe()} replayed nothing past {at} for {stall:g} s "
                    f"(params.failback.stall) before reaching {lsn_text(ahead.lsn)} "
                    f"({'streaming' if seen and seen.streaming else 'not streaming'}): "
                    f"{source.describe()} no longer has the WAL it needs")
            fencing.pause(POLL)

    def _choose(self, node: Node, source: Node, end: int | None) -> Evidence:
        """How to copy: from SQL when the WAL `source` wrote since `node`'s WAL `end` is
        half its databases or more (a base backup); else what a rewind's dry run says it
        would copy, of the source's size."""
        out: Evidence = {}
        if end is not None:
            size = self.db.size(source)
            wal = max(0, min(size.lsn - end, size.wal_bytes))
            out["estimate"] = {"walMb": _mb(wal), "databasesMb": _mb(size.databases_bytes),
                               "from": lsn_text(end), "to": lsn_text(size.lsn)}
            if 2 * wal >= size.databases_bytes > 0:
                return {**out, "why": Copy.WAL_HALF}
        try:
            fencing.check()
            rewind: RewindSize = self.db.rewind_size(node, source=source)
        except RewindFailed as exc:
            return {**out, "why": Copy.REWIND_FAILED, "rewindError": str(exc)}
        out.update(rewindMb=rewind.copy_mb, sourceMb=rewind.source_mb)
        half = rewind.source_mb > 0 and 2 * rewind.copy_mb >= rewind.source_mb
        return {**out, "why": Copy.COPIES_HALF if half else Copy.REWIND}

    def _basebackup(self, node: Node, source: Node) -> Evidence:
        fencing.check()
        return self.db.basebackup(node, source=source, aside=self.aside)


def _wal_end(stopped: Evidence) -> int | None:
    """Where the stopped node's WAL ends (at or past the fork), when its `stop` knew."""
    return parse_lsn(stopped["walEnd"]) if stopped.get("walEnd") else None


def _mb(size: int) -> float:
    return round(size / (1 << 20), 1)


def _streamed_up(db: Database, standby: Node, primary: Node,
                 timeout: float) -> tuple[NodeState, NodeState] | None:
    """Wait until `standby` streams on `primary`'s timeline and has replayed the LSN the
    primary was at when first read (the primary read first, and again only while it
    does not answer: a standby at that LSN has replayed all it had then, and the wait
    ends under a steady stream of writes): (standby, primary), or None after `timeout`
    seconds."""
    ahead: NodeState | None = None

    def read() -> tuple[NodeState, NodeState] | None:
        nonlocal ahead
        ahead = ahead or state_or_none(db, primary)
        behind = None if ahead is None else state_or_none(db, standby)
        return None if ahead is None or behind is None else (behind, ahead)

    return _wait(read, _caught_up, timeout)


def _caught_up(pair: tuple[NodeState, NodeState] | None) -> bool:
    if pair is None:
        return False
    standby, primary = pair
    return (standby.in_recovery and standby.streaming and standby.timeline == primary.timeline
            and standby.lsn >= primary.lsn)


def _wait(read: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T | None:
    """Read until `done` (what was read), or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if done(found):
            return found
        if time.monotonic() >= deadline:
            return None
        fencing.pause(POLL)

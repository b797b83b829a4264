"""The database's invariants (7's promotions, and 8) for `invariants.Checker`.

Owns what the simulation checks of the in-memory database pair (`controller.testing_db`)
beyond "never two writable primaries" (checked on every write by the checker): a
promotion finds the old primary fenced and is made once per step, and a failback loses
no write committed at the node the incident promoted. A promotion after a person's fence
comes after someone said done in that run: in its human step `fence-primary`, or to the
promote step that asked for them (the journal's audit has the `done`). Kept apart so
the checker stays about the journal and the world; it reads the fake directly (its rows
and the clients' commits are not part of the world's fingerprint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from controller.model import StepStatus

if TYPE_CHECKING:
    from tests.reliability.sim.invariants import Checker
    from tests.reliability.sim.world import WorldWrite


class DatabaseChecks:
    def __init__(self, checker: Checker):
        self.checker = checker
        self.promotions: list[str] = []  # the label of each promotion, in order

    def fail(self, kind: str, detail: str) -> NoReturn:
        self.checker.fail(kind, detail)

    # --- 7: a promotion after a fence, once -----------------------------------------------

    def promotion(self, w: WorldWrite, run: str, what: str) -> None:
        self.checker.checked["promotion"] += 1
        if w.label in self.promotions:
            self.fail("a promote performed twice", f"{what}; promotions under "
                      f"{self.promotions}")
        self.promotions.append(w.label or "")
        for name, _, recovery, _, fenced, _ in w.before:
            if recovery:
                continue  # the standby being promoted
            if fenced is None:
                self.fail("a promote without a fence", f"{what}: the old primary {name} "
                          "was not fenced first")
            if fenced != "person":
                continue
            self.checker.checked["promotion after a person's fence"] += 1
            if not self.said_done(run, (w.label or "").split("/")[-1]):
                self.fail("a promote without a fence", f"{what}: a person powered off "
                          f"{name}, but the journal records no done for this run's step "
                          "fence-primary, nor for the promote step that asked: it "
                          "promoted before the confirmation")

    def said_done(self, run: str, step: str) -> bool:
        """The run's human step `fence-primary` is done, or someone said done to `step`."""
        if self.checker.steps.get((run, "fence-primary"), ("", ""))[1] == \
                StepStatus.SUCCEEDED.value:
            return True
        conn = self.checker.conn
        assert conn is not None
        return conn.execute("SELECT 1 FROM audit WHERE run_id=? AND action='done' AND "
                            "detail=?", (run, f"step {step}")).fetchone() is not None

    # --- 8: no committed write lost -------------------------------------------------------

    def nothing_lost(self, w: WorldWrite, what: str) -> None:
        """The node a failback just promoted holds every row committed at the node it takes
        over from (the other primary, fenced) on that node's timeline."""
        fake = self.checker.sim.raw.fakes[w.backend]
        promoted = next(name for (name, _, recovery, *_), (_, _, now, *_)
                        in zip(w.before, w.after, strict=True) if recovery and not now)
        rows = fake.nodes()[promoted]["rows"]
        for name, _, recovery, _, _, timeline in w.before:
            if name == promoted or recovery:
                continue
            lost = [c["row"] for c in fake.commits() if c["node"] == name
                    and c["timeline"] == timeline and c["row"] not in rows]
            self.checker.checked["nothing lost"] += 1
            if lost:
                self.fail("a failback lost committed writes", f"{what}: {promoted} was "
                          f"promoted without rows {lost}, committed at {name} on timeline "
                          f"{timeline}")

    def home_has_every_row(self, run_id: str) -> None:
        """At a completed failback: the node taking writes holds every row committed at
        the node the incident promoted."""
        raw = self.checker.sim.raw
        fake = next((f for b, f in raw.fakes.items() if raw.roles[b] == "database"), None)
        if fake is None:
            return
        nodes = fake.nodes()
        taking = [n for n, node in nodes.items() if node["running"] and not node["recovery"]
                  and not node["readOnly"]]
        promoted = {p["node"] for p in fake.promotions()} - {fake.options.primary}
        committed = [c["row"] for c in fake.commits() if c["node"] in promoted]
        if not committed:
            return
        self.checker.checked["nothing lost"] += 1
        lost = [] if len(taking) != 1 else [r for r in committed
                                             if r not in nodes[taking[0]]["rows"]]
        if len(taking) != 1 or lost:
            self.fail("a failback lost committed writes", f"run {run_id} completed Healthy "
                      f"with {taking or 'no node'} taking writes"
                      + (f", which lacks rows {lost} committed at {sorted(promoted)} during "
                         "the incident" if lost else ""))

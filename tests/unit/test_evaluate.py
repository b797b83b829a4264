"""`controller.records.evaluate`: the post-incident evaluation, checked figure by figure on
hand-made archived runs whose answers are worked out in the comments."""

from __future__ import annotations

from typing import Any

from controller.records import evaluate

NOW = 1_800_000_000.0
DAY = 86400.0
H = 3600.0


def step(name: str, *, started: float, met: bool | None = None,
         evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "startedAt": started, "met": met, "evidence": evidence or {},
            "targetSeconds": None if met is None else 600.0}


def archived(run_id: str, *, detected: float, level: int | None, phase: str,
             took: float, steps: list[dict[str, Any]], audit: list[dict[str, Any]] = (),
             by: str = "controller", kind: str = "failover", plan: str = "web",
             doc_kind: str = "run") -> dict[str, Any]:
    return {"kind": doc_kind,
            "run": {"id": run_id, "plan": plan, "kind": kind, "phase": phase, "level": level,
                    "requestedBy": by, "detectedAt": detected, "startedAt": detected,
                    "finishedAt": detected + took},
            "steps": steps, "audit": list(audit)}


T = NOW - 10 * DAY
RUNS = [
    # A: level 1, approved by alice 4 min in, first step at 1 min, repaired in 3 h
    archived("a", detected=T, level=1, phase="FailedOver", took=3 * H, steps=[
        step("redirect", started=T + 60, met=True),
        step("promote", started=T + 300, met=False, evidence={"rpoSeconds": 5})],
        audit=[{"at": T + 30, "actor": "controller", "action": "notify"},
               {"at": T + 240, "actor": "alice", "action": "approve"}]),
    # B: level 2, requested by bob (acknowledged at once), repaired in 1 h
    archived("b", detected=T + DAY, level=2, phase="FailedOver", took=1 * H, by="bob", steps=[
        step("redirect", started=T + DAY + 30, met=True),
        step("promote", started=T + DAY + 90, met=True, evidence={"rpoSeconds": 20})]),
    # C: level 2, nobody acted, failed after 5 h: not repaired
    archived("c", detected=T + 2 * DAY, level=2, phase="Failed", took=5 * H, steps=[
        step("redirect", started=T + 2 * DAY + 10, met=False)]),
    # D: level 2, nobody acted, repaired in 4 h, no step with a target
    archived("d", detected=T + 3 * DAY, level=2, phase="FailedOver", took=4 * H, steps=[
        step("redirect", started=T + 3 * DAY + 20)]),
    # not counted: detected 200 days ago, a failback, a drill's verdict, another plan
    archived("old", detected=NOW - 200 * DAY, level=1, phase="FailedOver", took=H, steps=[]),
    archived("back", detected=T, level=None, phase="Healthy", took=H, steps=[],
             kind="failback"),
    archived("drill", detected=T, level=1, phase="FailedOver", took=H, steps=[],
             doc_kind="drill"),
    archived("other", detected=T, level=1, phase="FailedOver", took=H, steps=[],
             plan="api"),
]


def test_every_figure_of_the_evaluation() -> None:
    ev = evaluate.evaluate(RUNS, plan="web", since=180 * DAY, now=NOW)
    assert ev["runIds"] == ["a", "b", "c", "d"]
    speed = ev["responseSpeed"]
    assert speed["acknowledgementSeconds"] == {  # a 240 s, b 0 s
        "count": 2, "min": 0.0, "p50": 0.0, "p90": 240.0, "max": 240.0, "mean": 120.0}
    assert speed["unacknowledged"] == ["c", "d"]
    assert speed["firstActionSeconds"] == {  # 60, 30, 10, 20
        "count": 4, "min": 10.0, "p50": 20.0, "p90": 60.0, "max": 60.0, "mean": 30.0}
    eff = ev["recoveryEfficiency"]
    assert eff["targets"] == {"met": 3, "total": 5, "percent": 60.0}
    assert eff["perStep"] == {"promote": {"met": 1, "total": 2, "percent": 50.0},
                              "redirect": {"met": 2, "total": 3, "percent": 66.7}}
    assert eff["perLevel"] == {"1": {"met": 1, "total": 2, "percent": 50.0},
                               "2": {"met": 2, "total": 3, "percent": 66.7}}
    assert ev["mttr"] == [
        {"level": "1", "runs": 1, "repaired": 1, "failed": 0, "meanSeconds": 3 * H,
         "targetSeconds": 4 * H, "met": True,
         "withinTarget": {"met": 1, "total": 1, "percent": 100.0}},
        {"level": "2", "runs": 3, "repaired": 2, "failed": 1, "meanSeconds": 2.5 * H,
         "targetSeconds": 2 * H, "met": False,  # (1 h + 4 h) / 2 > 2 h
         "withinTarget": {"met": 1, "total": 2, "percent": 50.0}}]
    assert ev["rto"] == {"count": 3, "min": H, "p50": 3 * H, "p90": 4 * H, "max": 4 * H,
                         "mean": 8 * H / 3}
    assert ev["rpo"] == {"count": 2, "min": 5.0, "p50": 5.0, "p90": 20.0, "max": 20.0,
                         "mean": 12.5}


def test_every_plan_and_a_shorter_window() -> None:
    assert evaluate.evaluate(RUNS, plan=None, since=180 * DAY, now=NOW)["runIds"] == [
        "a", "other", "b", "c", "d"]
    assert evaluate.evaluate(RUNS, plan="web", since=8 * DAY, now=NOW)["runIds"] == ["c", "d"]
    empty = evaluate.evaluate([], plan="web", since=DAY, now=NOW)
    assert empty["runs"] == 0 and empty["recoveryEfficiency"]["targets"]["percent"] is None
    assert "0 failover run(s)" in evaluate.to_markdown(empty)


def test_the_markdown_tables_and_chart() -> None:
    md = evaluate.to_markdown(evaluate.evaluate(RUNS, plan="web", since=180 * DAY, now=NOW))
    assert "| acknowledgement | 2 | 0s | 4m | 4m |" in md
    assert "Not acknowledged by a person: c, d" in md
    assert "Overall: 60 % (3/5)" in md
    assert "| 2 | 3 | 2 | 1 | 2h 30m | 2h | **no** | 50 % (1/2) |" in md
    bars = md.split("```text\n")[1].split("```")[0].splitlines()
    # the longest value (level 1's 4 h target) spans the chart; 3 h met, 2.5 h past 2 h
    assert bars[1] == " level 1 " + "#" * 30 + " " * 10 + "| 3h (target 4h)"
    assert bars[2] == " level 2 " + "#" * 20 + "|" + "!" * 4 + " " * 16 + " 2h 30m (target 2h)"
    assert "| RPO (data lost) | 2 | 5s | 5s | 20s | 20s |" in md

"""Which steps a failback reverts, and in what order: one rule for the engine, the preview
and the remote CLI.

Why each rule:
- **The whole incident.** A failback reverts every failover run since the last failback
  that completed — a retried failover after a failed one included — newest run first,
  each run's steps in reverse order. Each revert compares before it writes, so reverting
  the newest run returns the world to what the older run left, and reverting that one
  returns it to what it was before the *first* failover of the incident.
- **Every step that may have written**: a step of a revertible kind (traffic, DNS:
  `StepKind.revertible`) whose original was saved
  (`prepared`) and that did not stay pending — succeeded, failed after writing, unknown,
  running when a controller died, or already reverted (reverting again is a no-op that
  says "unchanged").
- **Every revert is tried**: one that fails does not stop the others (`onFailure:
  continue`); the failback then ends Failed, naming what it could not revert.
- **Frozen definitions.** The revert step carries the definition the failover run froze
  at its start, so renaming a step or re-pointing it at another backend afterwards cannot
  make a failback revert the wrong thing.
- **The database first.** When the incident may have promoted a standby (a `promote`
  step that succeeded, found its promotion done (`alreadyPromoted`), or read the standby
  and then failed or was cut short: a promotion may have landed before a validation
  failed or a controller died), the failback starts with one `db-failback` step carrying
  that step's frozen definition, before every revert, whatever order the failover ran
  in: traffic and DNS move home only after the database has, or the writes they bring
  home would land on a node that is not the primary. The step reads the nodes and
  changes nothing when the standby was never promoted. It stops the failback when it
  fails (`onFailure: abort`): the traffic stays where the database is.
"""

from __future__ import annotations

from typing import Any

from controller.journal import Journal, Run
from controller.model import Phase, StepRecord, StepStatus
from controller.registry import find_step_kind

DATABASE_TIMEOUT = 4 * 3600  # rebuilding a standby may copy the whole database
_WROTE = (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.UNKNOWN, StepStatus.RUNNING,
          StepStatus.REVERTED)


def may_have_written(action: str, status: str, evidence: dict[str, Any]) -> bool:
    known = find_step_kind(action)  # a kind no longer known cannot be reverted
    return (known is not None and known.revertible and StepStatus(status) in _WROTE
            and bool(evidence.get("prepared") or evidence.get("before") is not None))


def incident_runs(journal: Journal, plan: str) -> list[Run]:
    """Failover runs since the last completed failback, newest first."""
    runs = []
    for run in journal.runs(plan, limit=100):  # newest first
        if run.kind == "failback" and run.phase is Phase.HEALTHY and run.finished_at:
            break
        if run.kind == "failover":
            runs.append(run)
    return runs


def database_step(journal: Journal, runs: list[Run]) -> dict[str, Any] | None:
    """The `db-failback` step for the newest promotion of the incident's runs, if any."""
    for run in runs:  # newest first
        frozen = {d["name"]: d for d in run.steps}
        for rec in reversed(journal.steps(run.id)):
            if rec.action == "promote" and rec.name in frozen and rec.status in _WROTE \
                    and "standbyBefore" in rec.evidence:
                return {"name": f"failback-{rec.name}", "action": "db-failback",
                        "onFailure": "abort", "timeout": DATABASE_TIMEOUT, "retries": 2,
                        "params": {"of": {"run": run.id, "step": rec.name},
                                   "definition": frozen[rec.name]}}
    return None


def revert_steps(journal: Journal, plan: str) -> list[dict[str, Any]]:
    """The failback run's step definitions: the database's failback first, when the
    incident promoted a standby, then one revert per step that may have written."""
    runs = incident_runs(journal, plan)
    database = database_step(journal, runs)
    steps: list[dict[str, Any]] = [] if database is None else [database]
    names: set[str] = {s["name"] for s in steps}
    for run in runs:
        frozen = {d["name"]: d for d in run.steps}
        for rec in reversed(journal.steps(run.id)):
            if rec.name not in frozen or not _wrote(rec):
                continue
            name = f"revert-{rec.name}"
            if name in names:
                name = f"{name}-{len(names) + 1}"
            names.add(name)
            definition = frozen[rec.name]
            steps.append({"name": name, "action": "revert", "onFailure": "continue",
                          "timeout": definition.get("timeout", 600), "retries": 2,
                          "params": {"of": {"run": run.id, "step": rec.name},
                                     "definition": definition}})
    return steps


def _wrote(rec: StepRecord) -> bool:
    return may_have_written(rec.action, rec.status.value, rec.evidence)


def left_behind(evidence: dict[str, Any]) -> list[str]:
    """What a revert left as a person changed it during the incident (its `left`)."""
    reverted = evidence if "left" in evidence else evidence.get("reverted") or {}
    out = []
    for item in reverted.get("left", []) if isinstance(reverted, dict) else []:
        out.append(str(item.get("record") or item.get("destination") or item)
                   if isinstance(item, dict) else str(item))
    return out

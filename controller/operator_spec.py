"""Which spec a FailoverPlan runs with: an edit of its sites or backends waits for its run.

Owns the rule that keeps a plan's sites and backends as its run found them. Why:

- **A failback reverts what the failover changed**: while a run is active, or the plan
  is failed over, or a failed run left something to revert (`holding`), an edit that
  changes the plan's sites or backends (`pinned`), or makes it invalid, is held: the
  plan goes on with the spec its run started with (`appliedSpec` in the status,
  condition SpecApplied False, saying why: `held_reason`), and the new spec is applied
  once the plan is back on its primary site. Any other edit applies at once.
- **Parsed as the CLI parses a file** (`parse`), so a plan is valid in the cluster
  exactly when it is valid on disk.
"""

from __future__ import annotations

from typing import Any

from controller.crd import GROUP, KIND, VERSION
from controller.failback import revert_steps
from controller.journal import Journal
from controller.model import Phase
from controller.plan import FailoverPlan, parse_plan


def pinned(spec: dict[str, Any]) -> tuple[Any, Any]:
    """What a run needs to stay as it found it: the sites and the backends (identities and
    options), which a failback reverts through."""
    return spec.get("sites"), spec.get("backends")


def parse(namespace: str, name: str, spec: dict[str, Any]) -> FailoverPlan:
    return parse_plan({"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                       "metadata": {"name": name}, "spec": spec},
                      f"{KIND} {namespace}/{name}")


def holding(journal: Journal, name: str) -> bool:
    """Whether the plan's sites and backends are held as the run found them: a run is
    active, or the plan is failed over, or a failed run left something to revert."""
    if journal.active_run(name) is not None:
        return True
    st = journal.plan_state(name)
    if st is None or st.phase in (Phase.HEALTHY, Phase.DEGRADED):
        return False
    return st.phase is not Phase.FAILED or bool(revert_steps(journal, name))


def held_reason(journal: Journal, name: str, generation: int | None, applied: int | None,
                problems: list[str] | None) -> str:
    """Why generation `generation` of the plan is not applied, and until when."""
    run = journal.active_run(name)
    st = journal.plan_state(name)
    while_ = (f"run {run.id} is active" if run is not None else
              f"the plan is {st.phase.value if st else 'failed over'}")
    what = (f"it is invalid ({'; '.join(problems)})" if problems else
            "it changes the plan's sites or backends")
    return (f"generation {generation} is not applied while {while_}: {what}. The plan "
            f"goes on with generation {applied}, the spec its run started with, so a "
            "failback reverts the objects the failover changed; the new spec is applied "
            "once the plan is back on its primary site")

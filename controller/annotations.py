"""The request protocol between `failoverctl` (or anyone with kubectl) and the operator:
the annotations a FailoverPlan carries to ask for a failover or failback, approve a run or
a gated step, and say a human step is done — and whether a request can be acted on.

Owns the names, so the CLI's `remote` and the operator agree on them without one
importing the other, and the check of a request's values, made before the operator claims
it (a bad value is answered with a Warning Event naming the annotation and what it takes,
never lost after the claim).
"""

from __future__ import annotations

from controller.crd import GROUP

A_REQUEST, A_REASON, A_BY, A_LEVEL = (f"{GROUP}/{k}" for k in
                                      ("request", "reason", "requested-by", "level"))
A_APPROVE, A_APPROVED_BY = f"{GROUP}/approve", f"{GROUP}/approved-by"
A_DONE, A_DONE_BY = f"{GROUP}/done", f"{GROUP}/done-by"
LEVELS = ("1", "2", "3", "4")  # the response levels a failover request may name


def request_problem(notes: dict[str, str]) -> tuple[str, str, str] | None:
    """(annotation, value, what is wrong and allowed) when the request annotations cannot
    be acted on; None when they can. Checked before the request is claimed, so nothing
    raises between the claim and the answer."""
    kind = notes.get(A_REQUEST, "").strip()
    if kind not in ("failover", "failback"):
        return (A_REQUEST, notes.get(A_REQUEST, ""),
                f"{A_REQUEST} takes failover or failback")
    level = notes.get(A_LEVEL)
    if level is not None and level.strip() not in ("", *LEVELS):
        return (A_LEVEL, level, f"{A_LEVEL} takes {', '.join(LEVELS[:-1])} or {LEVELS[-1]} "
                                f"(the response level of the failover, 1 the most severe; "
                                f"leave it out for the level the plan's rules give)")
    return None

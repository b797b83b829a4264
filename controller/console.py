"""What `failoverctl` shows a person: step lines, previews, run summaries, status blocks.

Owns the terminal rendering shared by the two ways of driving a plan — plan files (the
journal, `cli.py`) and FailoverPlan resources in a cluster (their `.status`,
`remote.py`) — so a person sees the same progress line per step (time since detection
against its target), the same preview, the same summary and the same exit codes
whichever they use. Both sources already speak the same step JSON (`StepRecord.to_json`
is what the operator mirrors into the status), so the renderers take plain dicts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import click

from controller.plan import FailoverPlan, Step, format_duration
from controller.steps import step_kind

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_JOURNAL, EXIT_WAITING = 0, 1, 2, 3, 4
NO_DECISION = "no decision yet (the loop has not run)"  # lastDecision null in JSON


class CliError(Exception):
    """Stop the command: `error: <message>` on stderr and exit with `code`."""

    def __init__(self, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.code = code


def step_line(s: dict[str, Any]) -> str:
    mark = {"succeeded": "ok  ", "failed": "FAIL", "reverted": "undo", "running": "... ",
            "awaiting-approval": "wait", "awaiting-person": "todo",
            "unknown": "????"}.get(s["status"], "    ")
    target = format_duration(s["targetSeconds"]) if s.get("targetSeconds") else "-"
    since = (f"{s['sinceDetectionSeconds']:.2f} s" if s.get("sinceDetectionSeconds")
             is not None else "-")
    met = {True: "met", False: "MISSED", None: ""}[s.get("met")]
    err = f"  {s['error']}" if s.get("error") else ""
    return f"  [{mark}] {s['name']:<24} since detection {since:>10}  target {target:>5} {met}{err}"


class Progress:
    """Prints a step's line each time its status changes (pending steps stay quiet)."""

    def __init__(self) -> None:
        self._shown: dict[str, str] = {}

    def show(self, steps: Iterable[dict[str, Any]]) -> None:
        for s in steps:
            if s["status"] != "pending" and self._shown.get(s["name"]) != s["status"]:
                self._shown[s["name"]] = s["status"]
                click.echo(step_line(s))


def does(plan: FailoverPlan, s: Step) -> str:
    """One line saying what a step would do, for the dry run."""
    return step_kind(s.action).describe(s, plan)


def preview(plan: FailoverPlan) -> list[dict[str, Any]]:
    return [{"order": i, "name": s.name, "action": s.action, "does": does(plan, s),
             "target": s.target, "timeout": s.timeout, "retries": s.retries,
             "approval": s.approval or step_kind(s.action).waits_for_person,
             "onFailure": s.on_failure}
            for i, s in enumerate(plan.spec.steps, 1)]


def failing(readiness: dict[str, Any] | None) -> list[str]:
    """"check: detail" per failed readiness check, from the journal's or the status's form."""
    r = readiness or {}
    return list(r.get("failing") or [f"{c['name']}: {c['detail']}" for c in r.get("failed", [])])


def show_preflight(title: str, changes: list[dict[str, Any]],
                   readiness: dict[str, Any] | None) -> None:
    click.echo(title)
    for i, c in enumerate(changes, 1):
        target = format_duration(c["target"]) if c.get("target") else "-"
        click.echo(f"{i:>3}. {c['name']:<24} target {target:>5}  {c.get('does', '')}")
        if c.get("change", "-") != "-":
            click.echo(f"     would change: {c['change']}")
    if readiness and readiness.get("score") is not None:
        click.echo(f"backup site readiness: {readiness['score']:g} %")
        for f in failing(readiness):
            click.echo(f"  not ready: {f}")


def confirm(kind: str, plan: str, yes: bool) -> None:
    """Ask before changing the world; without a terminal only `--yes` proceeds."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError("refusing to act without confirmation: pass --yes (or --dry-run)")
    if not click.confirm(f"Proceed with the {kind} of {plan}?", default=False):
        raise CliError("not confirmed; nothing was changed")


def waiting_for(run: dict[str, Any], steps: list[dict[str, Any]], where: str) -> str:
    """The command that unblocks a run in AwaitingApproval (`where`: `--plan ...`)."""
    for s in steps:
        if s["status"] == "awaiting-person":
            return f"waiting for a person: failoverctl done {run['id']} {s['name']} {where}"
        if s["status"] == "awaiting-approval":
            return (f"waiting for approval: failoverctl approve {run['id']} --step "
                    f"{s['name']} {where}")
    return f"waiting for approval: failoverctl approve {run['id']} {where}"


def summary(run: dict[str, Any], steps: list[dict[str, Any]], where: str) -> str:
    lines = [f"run {run['id']}: {run['phase']}"
             + (f" — {run['outcome']}" if run.get("outcome") else "")]
    if run["phase"] == "AwaitingApproval" and run.get("finishedAt") is None:
        lines.append(waiting_for(run, steps, where))
    return "\n".join(lines)


def exit_code(run: dict[str, Any]) -> int:
    if run["phase"] == "Failed":
        return EXIT_FAILED
    return EXIT_OK if run.get("finishedAt") is not None else EXIT_WAITING


def status_text(entries: list[dict[str, Any]]) -> str:
    """`failoverctl status` for people, from journal or cluster entries alike."""
    lines = []
    for d in entries:
        where = f" [{d['namespace']}]" if d.get("namespace") else ""
        lines.append(f"{d['plan']}{where}: {d['phase']} (level {d['level'] or '-'}, active "
                     f"site {d['activeSite']})")
        lines.append(f"  {d['lastDecision'] or NO_DECISION}")
        if d.get("conditions"):
            lines.append("  conditions: " + ", ".join(
                f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c["status"] == "True"
                                                and c.get("reason") else "")
                for c in d["conditions"]))
        if d.get("readiness") and d["readiness"].get("score") is not None:
            failed = "; ".join(failing(d["readiness"]))
            lines.append(f"  backup site readiness {d['readiness']['score']:g} %"
                         + (f" — not ready: {failed}" if failed else ""))
        if d.get("run"):
            run = d["run"]
            cause = f" — {run['cause']}" if run.get("cause") else ""
            lines.append(f"  run {run['id']} ({run['kind']}): {run['phase']}{cause}")
            lines += [step_line(s) for s in d["run"]["steps"]]
    return "\n".join(lines)

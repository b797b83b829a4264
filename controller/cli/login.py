"""Who acts on a plan file: the operating-system login, proven by the OS, not claimed.

Owns the rule every command that acts on a plan file applies (`failover`, `failback`,
`approve`, `done`, `dns-prepare`, `verify`, `backup`, `drill`): no API server authenticates
anyone here, so the audit names the login running failoverctl (not $USER or
$FAILOVER_ACTOR, which anyone can set). `--as` may only repeat it; another name is
refused (exit 2) and the refusal audited, saying how that person can act instead. With
fop/NAME the API server's authentication names the actor (controller/remote.py); an
approval may also be proven by an SSH signature (controller/signing.py).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Any

import click

from controller.console import EXIT_INPUT, CliError
from controller.journal import Journal
from controller.loop import Engine


def login() -> str:
    """The operating system's name of the user running failoverctl; `uid-N` for a uid
    with no passwd entry."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid-{uid}"


def login_option(does: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--as` of a command that acts on a plan file only."""
    return click.option("--as", "actor", help=f"who {does}: only your own login (the "
                        "default; another name is refused and audited)")


def as_login(engine: Engine, claimed: str | None, *, does: str, refused: str,
             instead: str, run_id: str | None = None) -> str:
    """The login, when `claimed` (`--as`) is absent or repeats it; else the claim is
    audited as `refused` and a CliError (exit 2) says how `claimed` can act (`instead`)."""
    return claim(engine.journal, engine.plan.name, claimed, at=engine.clock.now(), does=does,
                 refused=refused, instead=instead, run_id=run_id)


def claim(journal: Journal, plan: str, claimed: str | None, *, at: float, does: str,
          refused: str, instead: str, run_id: str | None = None) -> str:
    """`as_login` for a command that has a journal but no engine yet (`drill PLAN`)."""
    who = login()
    if claimed is None or claimed == who:
        return who
    said = (f"--as {claimed} is refused: on a plan file you {does} as your login, {who}: "
            f"leave out --as, or {instead}")
    journal.audit(at=at, actor=who, action=refused, plan=plan, run_id=run_id, detail=said)
    raise CliError(said, EXIT_INPUT)

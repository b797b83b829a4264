"""Every command a runbook tells an operator to type exists in the CLI, with its options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from controller.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = sorted((ROOT / "runbooks").glob("*.md"))
SCENARIOS = {"channel-outage", "switch-to-backup-dc", "database-restore", "failback", "drill"}


def commands(path: Path) -> list[list[str]]:
    found = []
    for line in path.read_text().splitlines():
        for m in re.finditer(r"failoverctl [^`\n]*", line):
            found.append(shlex.split(m.group(0).replace("\\|", "|"))[1:])
    return found


def test_one_runbook_per_scenario() -> None:
    assert {p.stem for p in RUNBOOKS} >= SCENARIOS


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_runbook_commands_exist(path: Path) -> None:
    for argv in commands(path):
        name = argv[0]
        assert name in main.commands, f"{path.name}: no command `failoverctl {name}`"
        command = main.commands[name]
        known = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        for arg in argv[1:]:
            if arg.startswith("-"):
                assert arg in known, f"{path.name}: `failoverctl {name}` has no option {arg}"

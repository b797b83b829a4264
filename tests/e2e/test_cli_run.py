"""`failoverctl run` as a person watches it: each cycle says what it did, and a run that
waits says what for and which command lets it go on (`approve` for an approval, `done`
for a human step), instead of repeating the policy's "still tripped"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from controller import testing
from controller.journal import Journal
from controller.model import Phase
from tests.e2e.test_cli import cli, file_plan


def _plan(tmp_path: Path, change: Any) -> Path:
    path = file_plan(tmp_path)
    data = yaml.safe_load(path.read_text())
    change(data["spec"])
    path.write_text(yaml.safe_dump(data))
    testing.set_health("dc-a", False, state_file=str(tmp_path / "world.json"))
    return path


def _waiting(plan: Path, journal: Path) -> list[str]:
    """Run until the failover waits, then three more cycles; their lines."""
    first = cli("run", str(plan), "--ticks", "600", "--interval", "0.05", "--until",
                "AwaitingApproval", journal=journal)
    assert first.returncode == 0, first.stdout + first.stderr
    again = cli("run", str(plan), "--ticks", "3", "--interval", "0.05", journal=journal)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = again.stdout.splitlines()
    assert len(lines) >= 3 and not any("still tripped" in line for line in lines), lines
    return lines


def test_run_says_a_run_waits_for_approval_and_the_command_approves_it(
        tmp_path: Path) -> None:
    plan, journal = _plan(tmp_path, lambda s: s.update(mode="manual")), tmp_path / "j.db"
    lines = _waiting(plan, journal)
    [run] = Journal(journal).runs("memory-drill")
    said = (f"memory-drill: AwaitingApproval — run {run.id} waits for approval of the run: "
            f"failoverctl approve {run.id} --plan {plan}")
    assert set(lines) == {said}, lines
    command = re.sub(r"^.*: failoverctl ", "", said).split()
    done = cli(*command, "--wait", "60", journal=journal)  # approved by the login
    assert done.returncode == 0, done.stdout + done.stderr
    assert Journal(journal).runs("memory-drill")[0].phase is Phase.FAILED_OVER


def test_run_says_a_run_waits_for_a_person_and_the_command_finishes_the_step(
        tmp_path: Path) -> None:
    def human_step(spec: dict[str, Any]) -> None:
        spec["steps"].insert(0, {"name": "call-the-bank", "action": "manual",
                                 "params": {"instructions": "tell the bank we move"}})

    plan, journal = _plan(tmp_path, human_step), tmp_path / "j.db"
    lines = _waiting(plan, journal)
    [run] = Journal(journal).runs("memory-drill")
    said = (f"memory-drill: AwaitingApproval — run {run.id} waits for a person to finish "
            f"step call-the-bank: failoverctl done {run.id} call-the-bank --plan {plan}")
    assert set(lines) == {said}, lines
    command = re.sub(r"^.*: failoverctl ", "", said).split()
    done = cli(*command, journal=journal)  # done by the login
    assert done.returncode == 0, done.stdout + done.stderr
    assert Journal(journal).runs("memory-drill")[0].phase is Phase.FAILED_OVER

"""The project's promises to a newcomer: README commands, CI command, generated CRD."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from controller.crd import crd

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "drill" in commands[0] and "pytest" in commands[1]
    assert (ROOT / "README.md").read_text().index("```sh") < 40


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()
    assert ci[-1] == readme_commands()[1]


def test_crd_manifest_is_generated_from_the_plan_schema() -> None:
    shipped = yaml.safe_load((ROOT / "manifests/crd/failoverplans.yaml").read_text())
    regenerate = "failoverctl schema --crd > manifests/crd/failoverplans.yaml"
    assert shipped == crd(), f"the CRD is stale; regenerate it: {regenerate}"
    text = (ROOT / "manifests/crd/failoverplans.yaml").read_text()
    assert "$ref" not in text and "anyOf" not in text  # structural schema


def test_every_cli_command_has_help() -> None:
    res = subprocess.run([sys.executable, "-m", "controller", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    for command in ("validate", "plan", "run", "status", "failover", "failback", "approve",
                    "report", "drill", "schema"):
        assert command in res.stdout

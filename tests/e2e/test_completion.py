"""Shell completion as a person gets it: the script the README says to install, loaded
into the real bash, zsh and fish (Debian's packages, installed by scripts/setup), asked
to complete what a person types."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def _script(shell: str, tmp_path: Path) -> Path:
    """What the README's line writes: `_FAILOVERCTL_COMPLETE=<shell>_source failoverctl`."""
    out = subprocess.run([str(BIN / "failoverctl")], env={**_env(), "_FAILOVERCTL_COMPLETE":
                         f"{shell}_source"}, capture_output=True, text=True, check=True)
    path = tmp_path / f"complete.{shell}"
    path.write_text(out.stdout)
    return path


def _shell(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run scripts/setup"
    return path


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    script = _script("bash", tmp_path)
    complete = ('source "$1"; COMP_WORDS=($2); COMP_CWORD=$3; '
                '_failoverctl_completion failoverctl; printf "%s\\n" "${COMPREPLY[@]}"')
    commands = _run([_shell("bash"), "-c", complete, "-", str(script), "failoverctl fai", "1"])
    assert commands.split() == ["failback", "failover"]
    options = _run([_shell("bash"), "-c", complete, "-", str(script),
                    "failoverctl failover --le", "2"])
    assert options.split() == ["--level"]


def test_zsh_registers_the_completion_and_completes(tmp_path: Path) -> None:
    script = _script("zsh", tmp_path)
    registered = _run([_shell("zsh"), "-f", "-c",
                       f'autoload -Uz compinit; compinit -u -d {tmp_path}/zcompdump; '
                       f'source {script}; print -r -- $_comps[failoverctl]'])
    assert registered.strip() == "_failoverctl_completion"
    # what the registered function asks failoverctl for, with zsh's own words
    answer = subprocess.run([str(BIN / "failoverctl")], env={
        **_env(), "_FAILOVERCTL_COMPLETE": "zsh_complete", "COMP_WORDS": "failoverctl sta",
        "COMP_CWORD": "1"}, capture_output=True, text=True, check=True).stdout.splitlines()
    assert answer[:3] == ["plain", "status", main.commands["status"].get_short_help_str()]


def test_fish_shows_whole_descriptions(tmp_path: Path) -> None:
    """click's own fish script cut every description at its first comma ("Preview")."""
    script = _script("fish", tmp_path)
    lines = _run([_shell("fish"), "--no-config", "-c",
                  f'source {script}; complete -C "failoverctl fai"']).splitlines()
    got = dict(line.split("\t", 1) for line in lines)
    assert set(got) == {"failback", "failover"}
    for name, shown in got.items():
        full = main.commands[name].get_short_help_str()
        assert full.startswith(shown.removesuffix("…").removesuffix("...")), (name, shown)
        assert len(shown) > len("Preview,"), (name, shown)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_every_script_is_valid_for_its_shell(shell: str, tmp_path: Path) -> None:
    script = _script(shell, tmp_path)
    check = {"bash": ["-n"], "zsh": ["-n"], "fish": ["--no-execute"]}[shell]
    _run([_shell(shell), *check, str(script)])

"""The README's command table (its `| \\`failoverctl ...\\` |` rows) against the CLI a user
runs: every command is in the table, every command the table names exists, and every
option a row names (`--since`, `-o`, ...) is an option of that command, so a user
copying from the table never meets "No such command" or "No such option"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from controller.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
_CODE = re.compile(r"`([^`]+)`")
_OPTION = re.compile(r"(?<![\w/-])(--?[a-zA-Z][\w-]*)")


def _commands(group: click.Group, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command a user can run, by its words after `failoverctl`."""
    for name, command in group.commands.items():
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(main))


def _options(command: click.Command) -> set[str]:
    return {o for p in (*main.params, *command.params) for o in (*p.opts, *p.secondary_opts)
            if o.startswith("-")} | {"--help"}


def _rows() -> list[tuple[tuple[str, ...], str]]:
    """Per row of the table: the command's words (up to the first argument or option, as
    far as the CLI knows them; a word it does not know is kept, for the assertion to
    name), and the row's text with `\\|` read as `|`."""
    rows = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `failoverctl "):
            continue
        row = line.replace("\\|", "|")
        words = _CODE.findall(row)[0].split()[1:]
        path: tuple[str, ...] = ()
        group: click.Command = main
        for word in words:
            if not isinstance(group, click.Group) or not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            path += (word,)
            if word not in group.commands:
                break
            group = group.commands[word]
        rows.append((path, row))
    return rows


def test_the_table_names_every_command_and_only_commands_that_exist() -> None:
    rows = _rows()
    named = [path for path, _ in rows]
    assert len(named) > 10, f"{README}: no command table found"
    unknown = [" ".join(p) for p in named if p not in COMMANDS]
    assert not unknown, f"README names commands failoverctl does not have: {unknown}"
    missing = [" ".join(p) for p in COMMANDS if p not in named]
    assert not missing, f"README's command table has no row for: {missing}"


def test_every_option_a_row_names_is_an_option_of_its_command() -> None:
    wrong = []
    for path, row in _rows():
        command = COMMANDS.get(path)
        if command is None:
            continue  # said by the test above
        named = {o for code in _CODE.findall(row) for o in _OPTION.findall(code)}
        wrong += [f"failoverctl {' '.join(path)} {o}" for o in sorted(named - _options(command))]
    assert not wrong, f"README's command table names options that do not exist: {wrong}"

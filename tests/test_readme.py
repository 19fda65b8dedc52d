"""The README's quick start stays true: CI runs its test command, and it has exactly two commands."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    install_and_serve, install_and_test = _quick_start_commands()
    assert install_and_serve.endswith("livediff serve")
    ci = (REPO / ".ci" / "run").read_text()
    assert install_and_test in ci.splitlines()


def test_every_cli_command_is_documented():
    from livediff.cli import _parser

    text = (REPO / "README.md").read_text()
    commands = next(a for a in _parser()._subparsers._group_actions).choices  # every subcommand the CLI has
    assert {"serve", "simulate", "replay", "inspect", "bench", "report"} <= set(commands)
    for command in commands:
        assert f"`livediff {command}" in text, command

"""The README's two commands are what CI runs and what a fresh machine can run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    section = REPO.joinpath("README.md").read_text().split("## Two commands")[1].split("\n## ")[0]
    return re.findall(r"```sh\n(.+)\n```", section)


def test_two_one_line_commands_each_in_a_venv():
    commands = _commands()
    assert len(commands) == 2
    for command in commands:
        assert "python3 -m venv .venv" in command and "python3-venv" in command
        assert "python3 -m pip" not in command  # PEP 668: Debian's python3 refuses it
        assert not re.search(r"(^|&& )(pip|pytest|whale-listen) ", command)  # all from .venv


def test_ci_runs_the_readme_test_command_verbatim_and_fails_on_errors():
    ci = REPO.joinpath(".ci/run").read_text()
    lines = ci.splitlines()
    assert _commands()[1] in lines
    assert "set -euo pipefail" in lines  # a failing or empty (exit 5) pytest fails CI
    assert lines.index('"$lint/bin/ruff" check .') < lines.index(_commands()[1])  # lint first

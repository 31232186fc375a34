"""The command table loads every command, and --help stays light."""

from __future__ import annotations

import subprocess
import sys

import click

from cbtbackup.cli.app import COMMANDS, cli
from tests.conftest import RunCli


def test_every_listed_command_loads_under_its_name() -> None:
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name in (name, "list_backups")


def test_help_imports_no_engine_or_store() -> None:
    code = ("import sys; from cbtbackup.cli import main; main(['--help']);"
            "print(sorted(m for m in sys.modules if m.startswith(('cbtbackup.engine', 'cbtbackup.repo', 'boto'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_unknown_command(cli: RunCli) -> None:
    cli("frobnicate").assert_one_line_error(2, "frobnicate")


def test_version(cli: RunCli) -> None:
    result = cli("--version")
    assert result.code == 0 and "cbtbackup" in result.out

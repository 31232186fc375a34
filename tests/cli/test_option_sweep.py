"""Every option of every command, given hostile values: one line and a documented exit code, never an
internal error (exit 70). Commands that serve until stopped (mount, serve, web, attach, run) are left out:
their options are checked before they start, by their own tests."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from cbtbackup.cli.app import EXIT_INTERNAL, cli
from tests.conftest import RunCli

HOSTILE = ["-5", "0", "abc", "1e999", "", "99999999999999999999999", "nan", "/nonexistent/x", "10x", "-1s"]
LONG_RUNNING = {"mount", "serve", "web", "attach", "run"}
ARGUMENTS = {"source": "disk.img", "sources": "disk.img", "backup": "latest", "target": "out.img",
             "image": "disk.img", "older": "latest", "newer": "latest", "path": "disk.img"}
UNCHECKED = {"repo", "endpoint_url", "password_command"}  # a repository elsewhere, a command to run


def commands() -> list[tuple[list[str], click.Command]]:
    ctx = click.Context(cli)
    found: list[tuple[list[str], click.Command]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    walk(sub, [*path, name])
        elif path[0] not in LONG_RUNNING:
            found.append((path, command))

    walk(cli, [])
    return found


def test_no_option_value_reaches_an_internal_error(cli: RunCli, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk.img").write_bytes(os.urandom(1 << 20))
    assert cli("init", "-r", "repo", "--encryption", "none").code == 0
    assert cli("full", "-r", "repo", "disk.img").code == 0
    failures = []
    tried = 0
    for path, command in commands():
        base = [*path, *(ARGUMENTS.get(str(p.name), "x") for p in command.params if isinstance(p, click.Argument))]
        if any(p.name == "repo" for p in command.params):
            for repo in ("disk.img/sub", "disk.img", "", "s3://"):  # under a file, a file, nothing, no bucket
                result = cli(*base, "-r", repo)
                tried += 1
                if result.code == EXIT_INTERNAL or "Traceback" in result.err:
                    failures.append(f"{' '.join(base)} -r {repo!r}: {result.err.strip()[-200:]}")
            base += ["-r", "repo"]
        for option in command.params:
            if not isinstance(option, click.Option) or option.is_flag or option.name in UNCHECKED:
                continue
            for value in HOSTILE:
                result = cli(*base, option.opts[-1], value)
                tried += 1
                if result.code == EXIT_INTERNAL or "Traceback" in result.err:
                    failures.append(f"{' '.join(base)} {option.opts[-1]} {value!r}: {result.err.strip()[-200:]}")
    assert tried > 500  # the sweep reached the commands
    assert not failures, "\n".join(failures)

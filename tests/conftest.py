"""Fixtures shared by every test package: real image files, and the real command line run in-process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.cli import main
from cbtbackup.repo.repository import Repository
from tests.servers.s3_servers import ceph_cluster, moto_server, rgw_server, s3_server

# The S3 servers' session fixtures, for tests/s3 and the store conformance suite alike.
__all__ = ["ceph_cluster", "moto_server", "rgw_server", "s3_server"]

MakeImage = Callable[..., Path]
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(autouse=True)
def repository_passphrase(monkeypatch: pytest.MonkeyPatch) -> str:
    """Repositories made with the command line are encrypted by default: every test gives them this
    passphrase (through the environment, so child processes have it too)."""
    monkeypatch.setenv("CBTBACKUP_PASSWORD", PASSPHRASE)
    return PASSPHRASE


@pytest.fixture(autouse=True)
def attach_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """What attach records for the boot unit goes to the test's own folder, never to this host's."""
    where = tmp_path / "attach-registry"
    monkeypatch.setenv("CBTBACKUP_ATTACH_REGISTRY", str(where))
    return where


@pytest.fixture
def make_image(tmp_path: Path) -> MakeImage:
    """A factory of image files filled with random bytes (or zeros), ``size`` bytes long."""
    counter = 0

    def make(size: int = 4 << 20, *, zeros: bool = False, name: str | None = None) -> Path:
        nonlocal counter
        counter += 1
        path = tmp_path / (name or f"disk{counter}.img")
        with open(path, "wb") as f:
            if zeros:
                f.truncate(size)
            else:
                f.write(os.urandom(size))
        return path

    return make


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.out.strip().splitlines()[-1])
        return parsed

    def assert_one_line_error(self, code: int, *fragments: str) -> None:
        assert self.code == code, (self.code, self.out, self.err)
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cbtbackup: error: "), self.err
        assert "Traceback" not in self.err
        for fragment in fragments:
            assert fragment in lines[0], lines[0]


RunCli = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    def run(*args: object) -> CliResult:
        code = main([os.fspath(a) if isinstance(a, Path) else str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run



@contextlib.contextmanager
def opened_repository(repo: tuple[str, ...] | Path) -> Iterator[Repository]:
    """A repository opened as the command line would: ``repo`` is a local repository's folder or the command
    line's ``-r REPO [--endpoint-url URL]``; the passphrase comes from the environment."""
    from cbtbackup.cli.passphrase import passphrase_for
    from cbtbackup.cli.repository_access import store_options
    from cbtbackup.repo.location import open_repository

    args = ("-r", str(repo)) if isinstance(repo, Path) else repo
    location = args[args.index("-r") + 1]
    endpoint = args[args.index("--endpoint-url") + 1] if "--endpoint-url" in args else None
    opened = open_repository(location, store_options(endpoint), passphrase_for(location))
    try:
        yield opened
    finally:
        opened.close()


def stored_key(repo: tuple[str, ...] | Path, key: str) -> str:
    """Where the store holds the object of a logical ``key`` (``backups/<chain>/<stamp>_<id>``,
    ``heads/<chain>``): private names hide chains and times from the store's keys."""
    with opened_repository(repo) as opened:
        return opened.stored_key(key)


def stored_manifests(repo: tuple[str, ...] | Path, chain: str | None = None) -> dict[str, str]:
    """Backup id -> the key its manifest is stored under, oldest first within each chain."""
    with opened_repository(repo) as opened:
        return {ref.id: opened.stored_key(ref.key) for ref in opened.list_backups(chain)}

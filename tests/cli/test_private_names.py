"""Private metadata on a local repository: no chain name, host, path, time or size readable from object
names or from any object's bytes (tests/s3/test_s3_private_names.py tells it over S3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.private_names_stories import CHAIN, HOST, PATH, private_metadata_story
from tests.conftest import MakeImage, RunCli


def directory_snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_no_chain_host_path_time_or_size_is_readable_in_the_repository(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    shown = private_metadata_story(cli, ("-r", str(repo)), make_image, tmp_path, lambda: directory_snapshot(repo),
                                   monkeypatch)
    assert shown == []


def test_plain_names_show_what_private_ones_hide(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layout of format version 1, which older versions read: the story's check finds names and times."""
    repo = tmp_path / "repo"
    shown = private_metadata_story(cli, ("-r", str(repo)), make_image, tmp_path, lambda: directory_snapshot(repo),
                                   monkeypatch, plain=True)
    assert any(f"{CHAIN} in the name backups/{CHAIN}/" in s for s in shown), shown
    assert any(s.startswith(f"{PATH} in the name backups/") for s in shown), shown
    assert any(s.startswith("time ") and " in the name backups/" in s for s in shown), shown
    assert not any(HOST in s for s in shown), shown  # key slots seal their host in both layouts

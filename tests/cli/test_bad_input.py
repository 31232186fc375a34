"""Bad input: one clear line on stderr, a documented non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path).code == 0
    return path


def test_missing_source(cli: RunCli, repo: Path, tmp_path: Path) -> None:
    cli("full", "-r", repo, tmp_path / "nope.img").assert_one_line_error(3, "nope.img", "no such file")


def test_uninitialised_directory(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cli("full", "-r", empty, make_image(MiB)).assert_one_line_error(3, "not a cbtbackup repository")
    cli("list", "-r", tmp_path / "absent").assert_one_line_error(3, "no repository at")


def test_foreign_directory(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config").write_text("[core]\nbare = true\n")
    cli("list", "-r", foreign).assert_one_line_error(5, "not a cbtbackup repository")
    cli("init", "-r", foreign).assert_one_line_error(2, "not empty")
    assert (foreign / "config").read_text() == "[core]\nbare = true\n"


def test_init_twice(cli: RunCli, repo: Path) -> None:
    cli("init", "-r", repo).assert_one_line_error(2, "repository already")


def test_future_format_version(cli: RunCli, repo: Path) -> None:
    cfg = json.loads((repo / "config").read_text())
    cfg["version"] = 7
    (repo / "config").write_text(json.dumps(cfg))
    cli("list", "-r", repo).assert_one_line_error(2, "version 7", "upgrade")


def test_unknown_and_ambiguous_backup(cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(MiB)
    ids = [cli("full", "-r", repo, image, "--json").json["id"] for _ in range(20)]
    cli("restore", "-r", repo, "ffffffffffffffffff", tmp_path / "x").assert_one_line_error(3, "no backup")
    shared = next(a[:1] for a in ids if sum(b.startswith(a[:1]) for b in ids) > 1)
    cli("restore", "-r", repo, shared, tmp_path / "x").assert_one_line_error(2, "matches")
    cli("verify", "-r", repo, "nobody@latest").assert_one_line_error(3, "no backups named")


def test_target_exists_or_too_small(cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(2 * MiB)
    cli("full", "-r", repo, image)
    precious = tmp_path / "precious"
    precious.write_bytes(b"do not lose me")
    cli("restore", "-r", repo, "latest", precious).assert_one_line_error(2, "exists", "--force")
    assert precious.read_bytes() == b"do not lose me"
    cli("restore", "-r", repo, "latest", precious, "--force").assert_one_line_error(2, "smaller than the image")
    assert precious.read_bytes() == b"do not lose me"
    big = tmp_path / "big"
    big.write_bytes(b"\xff" * (3 * MiB))
    assert cli("restore", "-r", repo, "latest", big, "--force").code == 0
    assert big.read_bytes() == image.read_bytes()


def test_source_size_changed_under_incr(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    image = make_image(2 * MiB)
    cli("full", "-r", repo, image)
    with open(image, "ab") as f:
        f.write(b"grown")
    cli("incr", "-r", repo, image).assert_one_line_error(2, "full backup", str(2 * MiB))


def test_usage_errors_are_one_line_too(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    cli("full", "-r", repo).assert_one_line_error(2, "SOURCE")
    cli("full", "-r", repo, make_image(MiB), "--provider", "magic").assert_one_line_error(2, "magic")
    cli("init", "-r", repo.parent / "r2", "--chunk-size", "3MiB").assert_one_line_error(2, "power of two")
    cli("init", "-r", repo.parent / "r3", "--chunk-size", "lots").assert_one_line_error(2, "not a size")
    cli("full", "-r", repo, make_image(MiB), "--name", "../etc").assert_one_line_error(2, "backup name")


def test_untracked_cbt_info(cli: RunCli, make_image: MakeImage) -> None:
    cli("cbt", "info", make_image(MiB)).assert_one_line_error(3, "not tracked")


def test_freeze_needs_an_attached_volume(cli: RunCli, repo: Path, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(MiB)
    cli("track", image)
    cli("full", "-r", repo, image, "--freeze", tmp_path).assert_one_line_error(2, "--freeze needs a volume attached")


def test_several_sources_need_a_provider_that_takes_groups(cli: RunCli, repo: Path, make_image: MakeImage) -> None:
    cli("full", "-r", repo, make_image(MiB), make_image(MiB), "--provider", "scan").assert_one_line_error(
        2, "needs the userspace, blksnap, qemu or rbd provider, not scan")
    # auto: two untracked files are scans, which have no instant to share
    cli("full", "-r", repo, make_image(MiB), make_image(MiB)).assert_one_line_error(
        2, "cannot be taken in a group with others")


@pytest.mark.parametrize(("sample", "message"), [
    ("lots", "not a size"), ("200%", "from 0% to 100%"), ("-1", "not a size"), ("x%", "not a percentage")])
def test_a_bad_unchanged_sample_is_one_line_and_backs_up_nothing(cli: RunCli, repo: Path, make_image: MakeImage,
                                                                sample: str, message: str) -> None:
    image = make_image(MiB)
    assert cli("track", image).code == 0
    assert cli("full", "-r", repo, image).code == 0
    cli("incr", "-r", repo, image, "--verify-unchanged", sample).assert_one_line_error(2, message)
    as_json = cli("incr", "-r", repo, image, "--verify-unchanged", sample, "--json")
    assert as_json.code == 2 and as_json.json["exit_code"] == 2 and message in as_json.json["error"]
    assert len(cli("list", "-r", repo, "--json").json["backups"]) == 1

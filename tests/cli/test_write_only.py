"""Write-only host keys on a local repository: the whole story, and each bad input as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.cli.test_key_file import files_of
from tests.cli.write_only_stories import make_write_only_key, write_only_story
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def test_a_write_only_host_backs_up_and_reads_nothing(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repo_dir = tmp_path / "repo"
    write_only_story(cli, ("-r", str(repo_dir)), make_image, tmp_path, lambda: files_of(repo_dir), monkeypatch)


@pytest.fixture
def host(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A repository, a tracked image backed up once with a write-only key, and that key."""
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    key = make_write_only_key(cli, ("-r", str(repo)), tmp_path)
    image = make_image(4 * MiB)
    assert cli("track", image).code == 0
    assert cli("full", "-r", repo, "--key-file", key, image).code == 0
    return repo, image, key


def test_a_record_of_another_repository_is_refused(cli: RunCli, host: tuple[Path, Path, Path],
                                                    tmp_path: Path) -> None:
    _repo, image, key = host
    second = tmp_path / "second"
    assert cli("init", "-r", second).code == 0
    other_key = make_write_only_key(cli, ("-r", str(second)), tmp_path, "second.key")
    os.replace(other_key, key)  # the key file replaced by another repository's; its record left beside it
    before = files_of(second)
    cli("incr", "-r", second, "--key-file", key, image).assert_one_line_error(2, "holds records of repository",
                                                                              "move it away")
    assert files_of(second) == before


def test_a_damaged_key_file_is_one_line(cli: RunCli, host: tuple[Path, Path, Path]) -> None:
    repo, image, key = host
    fields = json.loads(key.read_text())
    fields["public"] = fields["public"][:40]  # cut short
    key.write_text(json.dumps(fields))
    before = files_of(repo)
    cli("incr", "-r", repo, "--key-file", key, image).assert_one_line_error(5, "public key", "cut short")
    fields = json.loads(key.read_text())
    fields["public"] = "00" * 32  # whole, but edited
    key.write_text(json.dumps(fields))
    cli("incr", "-r", repo, "--key-file", key, image).assert_one_line_error(5, "checksum")
    assert files_of(repo) == before


def test_a_write_only_key_of_a_plain_repository_is_refused(cli: RunCli, tmp_path: Path) -> None:
    repo = tmp_path / "plain"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    cli("key", "export", "--write-only", "-r", repo, tmp_path / "k").assert_one_line_error(2, "not encrypted")
    assert not (tmp_path / "k").exists()


def test_a_rewritten_manifest_is_not_built_on(cli: RunCli, host: tuple[Path, Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """forget folds the host's recorded full into its child's place: the record no longer holds, so the next
    backup starts anew rather than build on a map the repository no longer has."""
    repo, image, key = host
    with TrackedVolume.open(image) as vol:
        vol.write(0, os.urandom(4096))
    assert cli("incr", "-r", repo, "--key-file", key, image).code == 0
    listed = cli("list", "-r", repo, "--json").json["backups"]
    assert cli("forget", "-r", repo, listed[0]["id"]).code == 0  # the full: folded into the incremental
    with TrackedVolume.open(image) as vol:
        vol.write(2 * MiB, os.urandom(4096))
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    after = cli("incr", "-r", repo, "--key-file", key, image, "--json")
    assert after.code == 0, after.err
    assert after.json["kind"] == "full" and "rewritten since this host wrote it" in " ".join(after.json["notes"])


def test_a_job_with_a_write_only_key_backs_up_and_leaves_retention_to_the_full_key(
    cli: RunCli, host: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, image, key = host
    monkeypatch.delenv("CBTBACKUP_PASSWORD")
    job = tmp_path / "job.toml"
    job.write_text(f'[repository]\nlocation = "{repo}"\nkey_file = "{key}"\n[[sources]]\npath = "{image}"\n')
    with TrackedVolume.open(image) as vol:
        vol.write(MiB, os.urandom(4096))
    ran = cli("run", job, "--json")
    assert ran.code == 0, ran.err
    assert [s["method"] for s in ran.json["sources"]] == ["cbt"]
    before = files_of(repo)
    job.write_text(job.read_text() + "[retention]\nkeep_last = 3\n")
    refused = cli("run", job, "--json")
    assert refused.code != 0 and "write-only" in refused.json["error"]
    assert files_of(repo) == before  # refused before any backup

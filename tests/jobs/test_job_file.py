"""Job files that cannot be run: one line naming the key and its line, exit 2, nothing run (a hook that would
leave a mark leaves none), for every class of mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import MakeImage, RunCli

GOOD = """\
    [repository]
    location = "repo"
    [hooks]
    before = "touch ran"
    [retention]
    keep_daily = 7
    [[sources]]
    path = "disk.img"
    [sources.hooks]
    timeout = "30s"
    """


@pytest.mark.parametrize(("change", "line", "message"), [
    (("keep_daily = 7", "keep_dayly = 7"), 6, "unknown key 'retention.keep_dayly'"),
    (("keep_daily = 7", 'keep_daily = "7"'), 6, "'retention.keep_daily' must be an integer, not a string"),
    (("keep_daily = 7", "keep_daily = -1"), 6, "'retention.keep_daily' must be at least 0, not -1"),
    (('timeout = "30s"', 'timeout = "30 parsecs"'), 10, "'sources.hooks.timeout': '30 parsecs' is not a duration"),
    (('timeout = "30s"', 'timout = "30s"'), 10, "unknown key 'sources.hooks.timout'"),
    (('path = "disk.img"', 'path = "disk.img"\nprovider = "magic"'), 9, "'sources.provider' is one of"),
    (('before = "touch ran"', "before = 5"), 4, "'hooks.before' must be a string, not an integer"),
    (('before = "touch ran"', 'before_snapshot = "x"'), 4, "unknown key 'hooks.before_snapshot'"),
    (('location = "repo"', 'location = "repo'), 2, "not valid TOML"),
    (('location = "repo"', 'place = "repo"'), 1, "'repository.location' is missing"),
    (("[retention]\nkeep_daily = 7\n", "[retention]\n"), 5, "[retention] keeps nothing"),
    (("[[sources]]", "[[source]]"), 7, "unknown key 'source'"),
    (('path = "disk.img"', 'path = "disk.img"\nverify_unchanged = "lots"'), 9,
     "'sources.verify_unchanged': 'lots' is not a size"),
    (('path = "disk.img"', 'path = "disk.img"\nverify_unchanged = 0'), 9,
     "'sources.verify_unchanged' must be a string, not an integer"),
])
def test_a_bad_job_file_is_one_line_naming_its_line(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                                   change: tuple[str, str], line: int, message: str) -> None:
    make_image(1 << 20, name="disk.img")
    assert cli("init", "-r", tmp_path / "repo").code == 0
    text = textwrap.dedent(GOOD)
    assert change[0] in text
    job = tmp_path / "job.toml"
    job.write_text(text.replace(change[0], change[1], 1))
    result = cli("run", job)
    result.assert_one_line_error(2, f"{job}:{line}: ", message)
    assert not (tmp_path / "ran").exists()
    assert cli("list", "-r", tmp_path / "repo", "--json").json["backups"] == []

    job.write_text(text)  # the file as it should be runs (and its hook with it)
    assert cli("run", job).code == 0
    assert (tmp_path / "ran").exists()  # hooks run in the job file's folder


def test_a_missing_repository_table_or_sources(cli: RunCli, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[[sources]]\npath = "disk.img"\n')
    cli("run", job, "--json").assert_one_line_error(2, "[repository] is missing")
    job.write_text('[repository]\nlocation = "repo"\n')
    cli("run", job).assert_one_line_error(2, "no [[sources]]")
    cli("run", tmp_path / "nope.toml").assert_one_line_error(2, "no job file")
    job.write_text('[repository]\nlocation = "r"\nkey_file = "k"\npassword_file = "p"\n[[sources]]\npath = "x"\n')
    cli("run", job).assert_one_line_error(2, ":1: give one of key_file, password_file and password_command")
    job.write_text('[repository]\nlocation = "r"\n[[sources]]\npath = "a"\nchain = "c"\n[[sources]]\npath = "b"\n'
                   'chain = "c"\n')
    cli("run", job).assert_one_line_error(2, "two sources name the same chain")
    job.write_text('[repository]\nlocation = "r"\n[notify.webhook]\nurl = "ftp://x"\n[[sources]]\npath = "a"\n')
    cli("run", job).assert_one_line_error(2, ":4: 'notify.webhook.url' must be an http:// or https:// address")


def test_a_repository_that_cannot_be_opened_fails_every_source(cli: RunCli, tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[repository]\nlocation = "no-repo-here"\n[[sources]]\npath = "a.img"\n')
    result = cli("run", job, "--json")
    assert result.code == 21
    assert result.json["error"].startswith(f"cannot open the repository {tmp_path / 'no-repo-here'}")
    assert result.json["sources"][0]["error"].startswith("not run: cannot open the repository")


def test_the_documented_example_job_is_a_valid_job(tmp_path: Path) -> None:
    """examples/jobs/nightly.toml, as docs/fleet.md shows it, reads whole: every key it uses exists."""
    from cbtbackup.jobs.job_file import load_job

    example = Path(__file__).parents[2] / "examples" / "jobs" / "nightly.toml"
    job = load_job(str(example))
    assert job.name == "nightly" and [s.provider for s in job.sources] == ["auto", "qemu", "auto"]
    assert job.sources[2].path == "rbd:vms/web2-disk"  # auto: an rbd: source is an RBD image
    assert job.retention is not None and job.retention.policy.daily == 14 and job.verify is not None
    assert job.notify.webhook is not None and job.notify.email is not None and job.metrics_file
    db = job.sources[0].hooks
    assert db.before_snapshot is not None and db.before_snapshot.argv[:2] == ("/bin/sh", "-c")
    assert db.after is not None and db.after.argv == ("/usr/local/bin/report-backup", "db1")
    assert job.full.every_backups == 30 and job.hooks.timeout == 600

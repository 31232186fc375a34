"""Trust, but verify, through the attach daemon: when a backup catches the served volume's tracking
under-reporting, the daemon starts a new tracking generation, so the next incremental scans too and then
CBT resumes; every backup restores byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

from cbtbackup.engine.providers import AttachedProvider
from cbtbackup.pipeline.backup import backup_session
from cbtbackup.pipeline.tracking_check import UnchangedSample
from cbtbackup.repo.location import open_repository
from tests.attach.conftest import Attached, assert_restores, back_up, read_direct, write_direct
from tests.conftest import RunCli
from tests.pipeline.test_tracking_check import hide_block

MiB = 1 << 20


def test_a_caught_lie_resets_the_daemons_tracking(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    vol = attached_image
    record = vol.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    taken: dict[str, bytes] = {}

    write_direct(vol.loop, 3, os.urandom(MiB))
    full = back_up(cli, repo, "full", vol.loop, taken)

    write_direct(vol.loop, 7, os.urandom(MiB))
    write_direct(vol.loop, 40, os.urandom(MiB))
    expected = read_direct(vol.loop)
    session = AttachedProvider(Path(record.image), Path(record.state_dir)).open_snapshot()
    try:
        assert session.cbt is not None
        session.cbt = hide_block(session.cbt, 40 * MiB // session.cbt.info.block_size)  # the lie
        result = backup_session(open_repository(str(repo)), session, "incr", full["name"],
                                unchanged_sample=UnchangedSample(size=None, fraction=1.0))
    finally:
        session.close()
    assert result.manifest.method == "scan" and result.tracking_mismatch is not None
    taken[result.manifest.ref.id] = expected

    status = cli("status", vol.image, "--json")
    assert status.code == 0, status.err
    assert "under-reporting" in str(status.json), status.json  # the daemon's tracker started a new generation
    write_direct(vol.loop, 11, os.urandom(MiB))
    after = back_up(cli, repo, "incr", vol.loop, taken)
    assert after["method"] == "scan", after
    assert any("caught the change tracking under-reporting" in n for n in after["notes"]), after
    write_direct(vol.loop, 13, os.urandom(MiB))
    again = back_up(cli, repo, "incr", vol.loop, taken)
    assert again["method"] == "cbt", again

    assert cli("detach", vol.mountdir).code == 0
    assert_restores(cli, repo, taken, tmp_path)

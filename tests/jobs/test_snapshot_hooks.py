"""The snapshot is taken between ``before_snapshot`` and ``after_snapshot``: a real attached volume (FUSE +
loop device, the engine's COW snapshot), hooks that write through the loop device as a database would."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.attach.conftest import Attached, attached_image
from tests.conftest import MakeImage, RunCli

__all__ = ["attached_image"]  # the fixture, from the attach tests
OFFSET = 1 << 20


def writer(tmp_path: Path, device: str, fill: bytes) -> str:
    """A hook that writes 4 KiB of ``fill`` at OFFSET straight to the device, and waits for it to land."""
    script = tmp_path / f"write_{fill.decode()}.py"
    script.write_text(textwrap.dedent(f"""\
        import os
        fd = os.open({device!r}, os.O_WRONLY)
        os.pwrite(fd, {fill!r} * 4096, {OFFSET})
        os.fsync(fd)
        os.close(fd)
        """))
    return json.dumps(["python3", str(script)])


def test_the_take_happens_between_the_snapshot_hooks(cli: RunCli, attached_image: Attached,
                                                     tmp_path: Path) -> None:
    vol = attached_image
    vol.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    job = tmp_path / "job.toml"
    job.write_text(textwrap.dedent(f"""\
        [repository]
        location = "{repo}"
        [[sources]]
        path = "{vol.loop}"
        chain = "db"
        [sources.hooks]
        before_snapshot = {writer(tmp_path, vol.loop, b"A")}
        after_snapshot = {writer(tmp_path, vol.loop, b"B")}
        """))
    ids = []
    for _ in range(2):
        result = cli("run", job, "--json")
        assert result.code == 0, result.err
        ids.append(result.json["sources"][0]["backup_id"])
        with open(vol.loop, "rb") as live:  # after the run, the device holds what after_snapshot wrote
            assert live.read(OFFSET + 4096)[OFFSET:] == b"B" * 4096
    second = cli("list", "-r", repo, "--json").json["backups"][1]
    assert second["method"] == "cbt"  # the hooks' writes went through the engine's tracker
    for backup_id in ids:  # ... and every backup what before_snapshot wrote: the take was in between
        out = tmp_path / f"{backup_id}.img"
        assert cli("restore", "-r", repo, backup_id, out).code == 0
        assert out.read_bytes()[OFFSET:OFFSET + 4096] == b"A" * 4096
    assert cli("detach", vol.mountdir).code == 0


def test_after_snapshot_runs_even_when_before_snapshot_or_the_take_fails(cli: RunCli, make_image: MakeImage,
                                                                        tmp_path: Path) -> None:
    image = make_image(1 << 20)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    job = tmp_path / "job.toml"
    body = f"""\
        [repository]
        location = "{repo}"
        [[sources]]
        path = "SOURCE"
        provider = "PROVIDER"
        [sources.hooks]
        before_snapshot = "BEFORE"
        after_snapshot = "echo released >> {tmp_path / 'released'}"
        """
    job.write_text(textwrap.dedent(body).replace("SOURCE", str(image)).replace("PROVIDER", "auto")
                   .replace("BEFORE", "echo half-quiesced; exit 1"))
    result = cli("run", job, "--json")
    assert result.code == 21
    assert result.json["sources"][0]["error"] == "hook before_snapshot failed: exited with 1 (half-quiesced)"
    assert (tmp_path / "released").read_text() == "released\n"

    # The take itself fails (blksnap asked for on a plain file, on a machine without the module): released too.
    job.write_text(textwrap.dedent(body).replace("SOURCE", str(image)).replace("PROVIDER", "blksnap")
                   .replace("BEFORE", "true"))
    result = cli("run", job, "--json")
    assert result.code == 21 and result.json["sources"][0]["backup_id"] is None
    assert (tmp_path / "released").read_text() == "released\n" * 2

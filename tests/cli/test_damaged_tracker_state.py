"""Tracker state that cannot be read — truncated, overwritten with garbage, emptied, zeroed, another image's —
vouches for nothing: the next incremental scans, says why in one line, exits 0 and restores byte for byte;
the state is made anew and the one after is by CBT again."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def damage(state: Path, how: str, other: Path) -> None:
    size = state.stat().st_size
    if how == "truncated garbage":
        state.write_bytes(os.urandom(300))
    elif how == "garbage of the right size":
        state.write_bytes(os.urandom(size))
    elif how == "empty":
        state.write_bytes(b"")
    elif how == "zeros":
        state.write_bytes(bytes(size))
    elif how == "another image's":
        shutil.copyfile(other, state)


@pytest.mark.parametrize("how", ["truncated garbage", "garbage of the right size", "empty", "zeros",
                                 "another image's"])
def test_damaged_state_means_one_scan_then_cbt(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                              how: str) -> None:
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    image, other = make_image(8 * MiB), make_image(8 * MiB)
    assert cli("track", image).code == 0 and cli("track", other).code == 0
    assert cli("full", "-r", repo, image).code == 0
    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB, os.urandom(MiB))
    damage(Path(f"{image}.cbt/tracker"), how, Path(f"{other}.cbt/tracker"))

    first = cli("incr", "-r", repo, image, "--json")
    assert first.code == 0, first.err
    assert first.json["method"] == "scan", first.json
    lines = [line for line in first.err.splitlines() if "scan incremental" in line]
    assert len(lines) == 1 and ("unreadable" in lines[0] or "not tracked" in lines[0]), first.err
    out = tmp_path / "first.img"
    assert cli("restore", "-r", repo, first.json["id"], out).code == 0
    assert out.read_bytes() == image.read_bytes()

    with TrackedVolume.open(image) as vol:
        vol.write(5 * MiB, os.urandom(MiB))
    second = cli("incr", "-r", repo, image, "--json")
    assert second.code == 0 and second.json["method"] == "cbt", second.json
    assert cli("restore", "-r", repo, second.json["id"], out, "--force").code == 0
    assert out.read_bytes() == image.read_bytes()

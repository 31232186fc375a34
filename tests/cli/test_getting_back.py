"""Getting data back: restore to standard output, choosing backups by time and by age, diff, and a
differential restore onto a stale copy."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20
BS = 64 << 10


def test_restore_to_stdout_pipes_the_image(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo, image = tmp_path / "repo", make_image(24 * MiB + 4096)
    with open(image, "r+b") as f:
        f.seek(5 * MiB)
        f.write(bytes(3 * MiB))  # a zero range: written as zeros in the stream
    cli("init", "-r", repo)
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]
    piped = subprocess.run(f"{sys.executable} -m cbtbackup restore -r {repo} {backup_id} - | cmp - {image}",
                           shell=True, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert f"restored {backup_id}" in piped.stderr  # the report goes to stderr: stdout is the image
    as_json = subprocess.run([sys.executable, "-m", "cbtbackup", "restore", "-r", str(repo), backup_id, "-",
                              "--json"], capture_output=True)
    assert as_json.returncode == 0 and as_json.stdout == image.read_bytes()
    assert b'"bytes_written"' in as_json.stderr


def test_latest_n_and_at_pick_the_right_backups(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo, image = tmp_path / "repo", make_image(2 * MiB)
    cli("init", "-r", repo)
    taken = []
    for _ in range(3):
        with open(image, "r+b") as f:
            f.write(os.urandom(4096))
        result = cli("full", "-r", repo, image, "--provider", "scan", "--json").json
        taken.append((result["id"], result["name"], image.read_bytes(), time.time()))
        time.sleep(1.2)  # whole seconds apart: --at below is given to the second
    name = taken[0][1]
    out = tmp_path / "out"
    for n, (backup_id, _, data, _) in enumerate(reversed(taken)):
        assert cli("restore", "-r", repo, f"{name}@latest~{n}", out, "--json").json["id"] == backup_id
        assert out.read_bytes() == data
        out.unlink()
    cli("restore", "-r", repo, f"{name}@latest~3", out).assert_one_line_error(3, "no latest~3")
    between = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(taken[1][3] + 1))
    assert cli("restore", "-r", repo, name, out, "--at", between, "--json").json["id"] == taken[1][0]
    out.unlink()
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(taken[0][3] + 1))
    assert cli("restore", "-r", repo, "latest", out, "--at", utc, "--json").json["id"] == taken[0][0]
    cli("restore", "-r", repo, name, tmp_path / "x", "--at", "2001-01-01").assert_one_line_error(3, "no backup at")
    cli("restore", "-r", repo, name, tmp_path / "x", "--at", "soon").assert_one_line_error(2, "not a time")


def test_diff_lists_exactly_the_ranges_written(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo, image = tmp_path / "repo", make_image(16 * MiB)
    cli("init", "-r", repo)
    cli("track", image)
    a = cli("full", "-r", repo, image, "--json").json["id"]
    writes = [(3 * MiB + 100, 5000), (9 * MiB, 2 * BS), (15 * MiB + BS - 1, 2)]
    with TrackedVolume.open(image) as vol:
        for offset, length in writes:
            vol.write(offset, os.urandom(length))
    b = cli("incr", "-r", repo, image, "--json").json["id"]
    expected = [(3 * MiB, BS), (9 * MiB, 2 * BS), (15 * MiB, 2 * BS)]  # whole tracking blocks
    result = cli("diff", "-r", repo, a, b, "--json").json
    assert [(r["offset"], r["length"]) for r in result["ranges"]] == expected
    assert result["bytes_differing"] == 5 * BS
    assert cli("diff", "-r", repo, b, b, "--json").json["ranges"] == []
    assert "3 range(s)" in cli("diff", "-r", repo, a, b).out


def test_restore_onto_a_stale_copy_writes_only_what_differs(
    cli: RunCli, make_image: MakeImage, tmp_path: Path
) -> None:
    repo, image = tmp_path / "repo", make_image(64 * MiB)
    cli("init", "-r", repo)
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]
    stale = tmp_path / "stale.img"
    stale.write_bytes(image.read_bytes())
    rng = random.Random(5)
    blocks = rng.sample(range(64 * MiB // BS), (64 * MiB // BS) // 100)  # 1 % of the blocks
    with open(stale, "r+b") as f:
        for block in blocks:
            f.seek(block * BS)
            f.write(os.urandom(BS))
    result = cli("restore", "-r", repo, backup_id, stale, "--onto-existing", "--json").json
    assert stale.read_bytes() == image.read_bytes()
    assert result["bytes_written"] == len(blocks) * BS <= 0.02 * 64 * MiB
    assert result["bytes_read_from_target"] == 64 * MiB
    again = cli("restore", "-r", repo, backup_id, stale, "--onto-existing", "--json").json
    assert again["bytes_written"] == 0 and again["chunks_fetched"] == 0
    cli("restore", "-r", repo, backup_id, tmp_path / "none", "--onto-existing").assert_one_line_error(3, "no such")

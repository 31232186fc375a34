"""The scan provider: a plain file changed with dd conv=notrunc, backed up by comparing digests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def dd(image: Path, seek_kib: int, count_kib: int, source: str = "/dev/urandom") -> None:
    subprocess.run(
        ["dd", f"if={source}", f"of={image}", "bs=1K", f"seek={seek_kib}", f"count={count_kib}", "conv=notrunc"],
        check=True, capture_output=True,
    )


def test_scan_story(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(20 * MiB + 4096)
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    points: list[tuple[str, bytes]] = []
    full = cli("full", "-r", repo, image, "--name", "plain", "--json")
    assert full.code == 0 and full.json["provider"] == "scan"
    points.append((full.json["id"], image.read_bytes()))
    for seek, count, src in [(100, 4, "/dev/urandom"), (5000, 3000, "/dev/urandom"), (9000, 2048, "/dev/zero"),
                             (20 * 1024, 4, "/dev/urandom")]:
        dd(image, seek, count, src)
        inc = cli("incr", "-r", repo, image, "--name", "plain", "--json")
        assert inc.code == 0, inc.err
        j = inc.json
        assert (j["kind"], j["method"]) == ("incr", "scan")
        assert j["bytes_scanned"] == image.stat().st_size
        changed_chunks = len({o // 1024 for o in range(seek, seek + count)})
        assert j["bytes_changed"] <= (changed_chunks + 1) * MiB  # only the chunks dd touched
        points.append((j["id"], image.read_bytes()))
    for i, (backup_id, expected) in enumerate(points):
        target = tmp_path / f"r{i}.img"
        assert cli("restore", "-r", repo, backup_id, target).code == 0
        assert target.read_bytes() == expected


def test_duplicate_content_is_stored_once(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    a = make_image(8 * MiB)
    b = tmp_path / "copy.img"
    b.write_bytes(a.read_bytes())
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    assert cli("full", "-r", repo, a, "--json").json["chunks_new"] == 8
    second = cli("full", "-r", repo, b, "--json").json
    assert (second["chunks_new"], second["chunks_reused"], second["bytes_stored"]) == (0, 8, 0)
    assert cli("restore", "-r", repo, f"{second['name']}@latest", tmp_path / "out").code == 0
    assert (tmp_path / "out").read_bytes() == a.read_bytes()

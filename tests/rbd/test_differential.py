"""Differentials of RBD images on a real Ceph cluster: --keep-base keeps the backup's snapshot (``…-base``)
past the next backup, and ``incr --since`` that backup diffs from it; without it the differential scans."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import RunCli
from tests.rbd.conftest import Image, MiB
from tests.rbd.test_provider import backup, ours

BLOCK = 64 << 10


def write_block(image: Image, block: int) -> None:
    image.write(block * BLOCK + 512, os.urandom(4096))


def restores(cli: RunCli, repo: Path, backup_id: str, expected: bytes, where: Path) -> bool:
    target = where / f"r-{backup_id}.img"
    assert cli("restore", "-r", repo, backup_id, target).code == 0
    return target.read_bytes() == expected


def test_a_differential_diffs_from_the_kept_base(cli: RunCli, repo: Path, make_rbd: Any, tmp_path: Path) -> None:
    image = make_rbd(32 * MiB, fast_diff=True)
    image.write(0, os.urandom(32 * MiB))  # every object exists: a new one diffs from its start
    full = backup(cli, repo, "full", image, "--keep-base")
    [base] = ours(image)
    assert base.endswith("-base")
    points = {full["id"]: image.content()}
    write_block(image, 3)
    first = backup(cli, repo, "incr", image)
    assert (first["method"], first["bytes_scanned"]) == ("cbt", BLOCK)
    assert base in ours(image) and len(ours(image)) == 2  # the base stays beside the newest
    write_block(image, 100)
    backup(cli, repo, "incr", image)
    write_block(image, 200)
    diff = backup(cli, repo, "incr", image, "--since", "full")
    assert (diff["method"], diff["parent"], diff["bytes_scanned"]) == ("cbt", full["id"], 3 * BLOCK)
    points[diff["id"]] = image.content()
    assert base in ours(image) and len(ours(image)) == 2

    # A snapshot a killed --keep-base run left (numbered past the newest backup) is removed, never kept.
    nonce_number = ours(image)[-1] if ours(image)[-1] != base else ours(image)[0]
    nonce, number = nonce_number.split("-")[1], int(nonce_number.split("-")[2])
    leftover = f"cbtbackup-{nonce}-{number + 1}-base"
    with image.open() as rbd_image:
        rbd_image.create_snap(leftover)
    write_block(image, 300)
    after = backup(cli, repo, "incr", image)
    assert (after["method"], after["parent"], after["bytes_scanned"]) == ("cbt", diff["id"], BLOCK)
    points[after["id"]] = image.content()
    assert leftover not in ours(image) and base in ours(image) and len(ours(image)) == 2
    for backup_id, expected in points.items():
        assert restores(cli, repo, backup_id, expected, tmp_path), backup_id

    newer = backup(cli, repo, "incr", image, "--keep-base")  # a newer base replaces the old one
    assert ours(image) == [s for s in ours(image) if s.endswith("-base")] and len(ours(image)) == 1
    assert newer["method"] == "cbt"


def test_without_a_kept_base_the_differential_scans_and_says_why(cli: RunCli, repo: Path, make_rbd: Any,
                                                                tmp_path: Path) -> None:
    image = make_rbd(16 * MiB, fast_diff=True)
    image.write(0, os.urandom(4 * MiB))
    full = backup(cli, repo, "full", image)
    write_block(image, 5)
    backup(cli, repo, "incr", image)
    write_block(image, 50)
    diff = backup(cli, repo, "incr", image, "--since", "full")
    assert (diff["method"], diff["parent"]) == ("scan", full["id"])
    assert any(n.startswith("scan incremental: ") and f"the base backup {full['id']}" in n for n in diff["notes"])
    assert restores(cli, repo, diff["id"], image.content(), tmp_path)
    assert len(ours(image)) == 1

"""The rbd provider on a real Ceph cluster: full → writes through librbd and `rbd bench` (discards, zeroes,
a rollback) → incrementals from RBD snapshot diffs → every backup restored byte-exact, one cbtbackup
snapshot left on the image, and a scan (with its one line) wherever the previous snapshot cannot vouch."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.location import open_repository
from tests.conftest import RunCli
from tests.rbd.conftest import POOL, Image, MiB, read_image, remove_image


def backup(cli: RunCli, repo: Path, kind: str, image: Image, *extra: object) -> dict[str, Any]:
    result = cli(kind, "-r", repo, image.source, "--json", *extra)
    assert result.code == 0, result.err
    return result.json


def ours(image: Image) -> list[str]:
    return [s for s in image.snapshots() if s.startswith("cbtbackup-")]


def random_writes(image: Image, rng: random.Random, count: int) -> None:
    for _ in range(count):
        offset = rng.randrange(0, image.size - MiB) // 4096 * 4096
        image.write(offset, os.urandom(rng.choice([4096, 65536, 300_000, MiB])))


@pytest.mark.parametrize("fast_diff", [True, False], ids=["fast-diff", "no-fast-diff"])
def test_full_then_five_incrementals_restore_byte_exact(cli: RunCli, repo: Path, make_rbd: Any, ioctx: Any,
                                                        tmp_path: Path, fast_diff: bool) -> None:
    image = make_rbd(32 * MiB, fast_diff=fast_diff)
    rng = random.Random(26)
    random_writes(image, rng, 12)
    expected = [image.content()]
    ids = [backup(cli, repo, "full", image)["id"]]
    assert len(ours(image)) == 1
    with image.open() as rbd_image:
        rbd_image.create_snap("user-before")  # a snapshot of the user's, rolled back to below
    for round_ in range(5):
        random_writes(image, rng, 6)
        if round_ == 1:
            image.discard(4 * MiB, 5 * MiB)  # whole objects and parts of them
            with image.open() as rbd_image:
                rbd_image.write_zeroes(20 * MiB + 12345, 100_000)
        if round_ == 2:
            subprocess.run(["rbd", "bench", "--io-type", "write", "--io-size", "4K", "--io-total", "2M",
                            "--io-pattern", "rand", f"{POOL}/{image.name}"], check=True, capture_output=True)
        if round_ == 3:  # back to before the full: every object written since reverts
            with image.open() as rbd_image:
                rbd_image.rollback_to_snap("user-before")
        expected.append(image.content())
        result = backup(cli, repo, "incr", image)
        assert result["method"] == "cbt", result["notes"]
        ids.append(result["id"])
        assert len(ours(image)) == 1  # the older snapshot went once the new backup was in
    assert "user-before" in image.snapshots()  # the user's own snapshots are left alone
    for n, (backup_id, want) in enumerate(zip(ids, expected, strict=True)):
        target = tmp_path / f"restored-{n}.img"
        assert cli("restore", "-r", repo, backup_id, target).code == 0
        assert target.read_bytes() == want, n
        name = f"{image.name}-restored-{n}"
        try:
            assert cli("restore", "-r", repo, backup_id, f"rbd:{POOL}/{name}").code == 0
            assert read_image(ioctx, name) == want, n
        finally:
            remove_image(ioctx, name)


def test_an_incremental_reads_only_the_changed_extents(cli: RunCli, repo: Path, make_rbd: Any) -> None:
    exact = make_rbd(32 * MiB, fast_diff=False)
    whole = make_rbd(32 * MiB, fast_diff=True)
    for image in (exact, whole):
        image.write(0, os.urandom(32 * MiB))
        backup(cli, repo, "full", image)
        for block in (3, 100, 101, 300):  # 64 KiB blocks: in objects 0, 1, 1 and 4 (4 MiB objects)
            image.write(block * 65536 + 512, os.urandom(4096))
    # librbd's extents, per 64 KiB block: asked of every object, or (fast-diff) of the objects its map names
    assert backup(cli, repo, "incr", exact)["bytes_scanned"] == 4 * 65536
    assert backup(cli, repo, "incr", whole)["bytes_scanned"] == 4 * 65536
    image = make_rbd(32 * MiB, fast_diff=True)
    image.write(0, os.urandom(32 * MiB))
    backup(cli, repo, "full", image)
    image.write(100 * 65536, os.urandom(4096))
    image.discard(8 * MiB, 4 * MiB)  # a whole object gone: zeros, known from the map alone
    result = backup(cli, repo, "incr", image)
    assert result["bytes_scanned"] == 65536 + 4 * MiB and result["bytes_stored"] < 65536 + 4096


def test_a_snapshot_deleted_by_hand_means_a_scan_that_says_so(cli: RunCli, repo: Path, make_rbd: Any,
                                                             tmp_path: Path) -> None:
    image = make_rbd()
    image.write(MiB, os.urandom(3 * MiB))
    backup(cli, repo, "full", image)
    with image.open() as rbd_image:
        rbd_image.remove_snap(ours(image)[0])
    image.write(10 * MiB, os.urandom(65536))
    result = backup(cli, repo, "incr", image)
    assert result["method"] == "scan"
    assert any("scan incremental" in n and "snapshot the previous backup read is not on" in n
               for n in result["notes"]), result["notes"]
    assert cli("restore", "-r", repo, result["id"], tmp_path / "r.img").code == 0
    assert (tmp_path / "r.img").read_bytes() == image.content()
    assert len(ours(image)) == 1
    assert backup(cli, repo, "incr", image)["method"] == "cbt"  # the new generation is trusted again


def test_an_image_replaced_or_copied_under_the_name_is_scanned(cli: RunCli, repo: Path, make_rbd: Any,
                                                               ioctx: Any, tmp_path: Path) -> None:
    image = make_rbd()
    image.write(0, os.urandom(2 * MiB))
    backup(cli, repo, "full", image)
    snapshot = ours(image)[0]
    # A copy with its snapshots (rbd export-diff | import-diff keeps the names) takes the image's name.
    copy = f"{image.name}-copy"
    subprocess.run(["rbd", "create", "--size", "32M", f"{POOL}/{copy}"], check=True)
    diff = tmp_path / "copy.diff"
    subprocess.run(["rbd", "export-diff", "--no-progress", f"{POOL}/{image.name}@{snapshot}", str(diff)],
                   check=True)
    subprocess.run(["rbd", "import-diff", "--no-progress", str(diff), f"{POOL}/{copy}"], check=True)
    image.remove()
    subprocess.run(["rbd", "rename", f"{POOL}/{copy}", f"{POOL}/{image.name}"], check=True)
    assert snapshot in image.snapshots()
    # The copy's snapshot carries our name but not this image's history (a copy made from an older state
    # or edited before its snapshot would differ unseen): its new image id makes it untrusted.
    image.write(5 * MiB, os.urandom(65536))
    result = backup(cli, repo, "incr", image)
    assert result["method"] == "scan"
    assert any("replaced or copied" in n for n in result["notes"]), result["notes"]
    assert cli("restore", "-r", repo, result["id"], tmp_path / "r.img").code == 0
    assert (tmp_path / "r.img").read_bytes() == image.content()
    remove_image(ioctx, copy)


def test_a_resized_image_is_taken_whole_with_one_line(cli: RunCli, repo: Path, make_rbd: Any,
                                                     tmp_path: Path) -> None:
    image = make_rbd(16 * MiB)
    image.write(0, os.urandom(MiB))
    backup(cli, repo, "full", image)
    with image.open() as rbd_image:
        rbd_image.resize(24 * MiB)
    image.write(20 * MiB, os.urandom(MiB))
    result = backup(cli, repo, "incr", image)
    assert result["kind"] == "full" and result["device_size"] == 24 * MiB
    assert any("was resized" in n for n in result["notes"]), result["notes"]
    assert cli("restore", "-r", repo, result["id"], tmp_path / "r.img").code == 0
    assert (tmp_path / "r.img").read_bytes() == image.content()


def test_a_backup_that_fails_keeps_the_previous_snapshot_as_the_base(cli: RunCli, repo: Path, make_rbd: Any,
                                                                     tmp_path: Path) -> None:
    image = make_rbd()
    image.write(0, os.urandom(MiB))
    backup(cli, repo, "full", image)
    before = ours(image)
    image.write(8 * MiB, os.urandom(MiB))

    def fail(point: str) -> None:
        if point == "before-commit":
            raise RuntimeError("killed before the manifest")

    with pytest.raises(RuntimeError):
        run_backup(open_repository(str(repo)), BackupOptions(image.source, "incr"), hook=fail)
    assert ours(image) == before
    result = backup(cli, repo, "incr", image)
    assert result["method"] == "cbt"
    assert cli("restore", "-r", repo, result["id"], tmp_path / "r.img").code == 0
    assert (tmp_path / "r.img").read_bytes() == image.content()


def test_an_image_in_a_namespace(cli: RunCli, repo: Path, ioctx: Any, ceph_conf: str, tmp_path: Path) -> None:
    namespace, name = f"ns{os.urandom(3).hex()}", "disk"
    spec = f"{POOL}/{namespace}/{name}"
    subprocess.run(["rbd", "-c", ceph_conf, "namespace", "create", f"{POOL}/{namespace}"], check=True)
    subprocess.run(["rbd", "-c", ceph_conf, "create", "--size", "8M", spec], check=True)
    try:
        subprocess.run(["rbd", "-c", ceph_conf, "bench", "--io-type", "write", "--io-size", "4K", "--io-total", "1M",
                        "--io-pattern", "rand", spec], check=True, capture_output=True)
        assert cli("full", "-r", repo, f"rbd:{spec}").code == 0
        subprocess.run(["rbd", "-c", ceph_conf, "bench", "--io-type", "write", "--io-size", "4K", "--io-total",
                        "64K", "--io-pattern", "rand", spec], check=True, capture_output=True)
        incr = cli("incr", "-r", repo, f"rbd:{spec}", "--json")
        assert incr.code == 0 and incr.json["method"] == "cbt", incr.err
        exported = tmp_path / "exported.img"
        subprocess.run(["rbd", "-c", ceph_conf, "export", "--no-progress", spec, str(exported)], check=True)
        assert cli("restore", "-r", repo, incr.json["id"], tmp_path / "r.img").code == 0
        assert (tmp_path / "r.img").read_bytes() == exported.read_bytes()
    finally:
        subprocess.run(["rbd", "-c", ceph_conf, "snap", "purge", spec], capture_output=True)
        subprocess.run(["rbd", "-c", ceph_conf, "rm", "--no-progress", spec], capture_output=True)
        subprocess.run(["rbd", "-c", ceph_conf, "namespace", "remove", f"{POOL}/{namespace}"], capture_output=True)

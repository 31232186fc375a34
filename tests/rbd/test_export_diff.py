"""`cbtbackup export-diff` checked by the real client: `rbd import-diff` of the stream onto an image holding
the older backup (or onto an empty image, for a whole backup) yields exactly the newer backup — for chains
of an RBD image, of a userspace-engine image and of a QEMU qcow2 image."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume
from cbtbackup.model import rbd_diff
from tests.conftest import RunCli
from tests.rbd.conftest import POOL, Image, MiB, read_image, remove_image


def import_diff(stream: Path, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rbd", "import-diff", "--no-progress", str(stream), f"{POOL}/{image}"],
                          capture_output=True, text=True)


def exported(image: str, tmp_path: Path) -> bytes:
    """The image as `rbd export` writes it."""
    out = tmp_path / f"{image}.export"
    subprocess.run(["rbd", "export", "--no-progress", f"{POOL}/{image}", str(out)], check=True)
    data = out.read_bytes()
    out.unlink()
    return data


def chain_round_trip(cli: RunCli, repo: Path, ioctx: Any, tmp_path: Path, size: int,
                     backups: list[tuple[str, bytes]]) -> None:
    """Seed an image with the first backup's stream, then apply each next backup's diff from the one
    before: after each, the image is that backup, byte for byte, and carries its snapshot."""
    target = f"seed-{os.urandom(4).hex()}"
    subprocess.run(["rbd", "create", "--size", f"{size // MiB}M", f"{POOL}/{target}"], check=True)
    try:
        previous = None
        for backup_id, want in backups:
            stream = tmp_path / f"{backup_id}.diff"
            args = ["export-diff", "-r", repo, backup_id, stream, "--json"]
            if previous is not None:
                args += ["--from", previous]
            result = cli(*args)
            assert result.code == 0, result.err
            done = import_diff(stream, target)
            assert done.returncode == 0, done.stderr
            assert exported(target, tmp_path) == want, backup_id
            with open(stream, "rb") as f:
                meta, _ = rbd_diff.read_stream(f)
            assert (meta.from_snap, meta.to_snap, meta.size) == (previous, backup_id, len(want))
            previous = backup_id
        assert read_image(ioctx, target) == backups[-1][1]
    finally:
        remove_image(ioctx, target)


def test_an_rbd_chain_round_trips_through_rbd_import_diff(cli: RunCli, repo: Path, make_rbd: Any, ioctx: Any,
                                                          tmp_path: Path) -> None:
    image: Image = make_rbd(32 * MiB)
    image.write(MiB, os.urandom(6 * MiB))
    backups = []
    for step in range(3):
        result = cli("full" if step == 0 else "incr", "-r", repo, image.source, "--json")
        assert result.code == 0, result.err
        backups.append((result.json["id"], image.content()))
        image.write(step * 7 * MiB + 4096, os.urandom(700_000))
        image.discard(2 * MiB + step * MiB, 300_000)
    chain_round_trip(cli, repo, ioctx, tmp_path, 32 * MiB, backups)


def test_a_userspace_engine_chain_round_trips(cli: RunCli, repo: Path, ioctx: Any, tmp_path: Path,
                                              make_image: Callable[..., Path]) -> None:
    path = make_image(16 * MiB)
    assert cli("track", path).code == 0
    backups = []
    for step in range(3):
        result = cli("full" if step == 0 else "incr", "-r", repo, path, "--json")
        assert result.code == 0, result.err
        assert step == 0 or result.json["method"] == "cbt"
        backups.append((result.json["id"], path.read_bytes()))
        with TrackedVolume.open(path) as volume:
            volume.write(step * 3 * MiB + 512 * 1024, os.urandom(200_000))
            volume.write(12 * MiB, bytes(MiB))  # zeros over data: a z record must clear it
    chain_round_trip(cli, repo, ioctx, tmp_path, 16 * MiB, backups)


def test_a_qemu_chain_round_trips(cli: RunCli, repo: Path, ioctx: Any, tmp_path: Path) -> None:
    disk = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    backups = []
    for step in range(3):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {0x31 + step} {step * 4}M 1M",
                        "-c", f"write -z {step * 2 + 1}M 64k", str(disk)], check=True, capture_output=True)
        result = cli("full" if step == 0 else "incr", "-r", repo, disk, "--json")
        assert result.code == 0, result.err
        assert result.json["provider"] == "qemu"
        raw = tmp_path / "raw.img"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
        backups.append((result.json["id"], raw.read_bytes()))
    chain_round_trip(cli, repo, ioctx, tmp_path, 16 * MiB, backups)


def test_a_whole_backup_onto_an_image_with_other_data_yields_the_backup(
        cli: RunCli, repo: Path, make_rbd: Any, ioctx: Any, tmp_path: Path) -> None:
    source: Image = make_rbd(8 * MiB)
    source.write(0, os.urandom(MiB))
    backup = cli("full", "-r", repo, source.source, "--json").json["id"]
    other: Image = make_rbd(8 * MiB)
    other.write(0, os.urandom(8 * MiB))  # every byte differs from the backup's zeros
    assert cli("export-diff", "-r", repo, backup, tmp_path / "s.diff", "--no-snapshot-names").code == 0
    assert import_diff(tmp_path / "s.diff", other.name).returncode == 0
    assert other.content() == source.content()
    assert other.snapshots() == []  # no to-snapshot record: import-diff took none


def test_export_diff_refusals(cli: RunCli, repo: Path, make_rbd: Any, tmp_path: Path,
                              make_image: Callable[..., Path]) -> None:
    image: Image = make_rbd(8 * MiB)
    first = cli("full", "-r", repo, image.source, "--json").json["id"]
    image.write(0, os.urandom(MiB))
    second = cli("incr", "-r", repo, image.source, "--json").json["id"]
    other = cli("full", "-r", repo, make_image(MiB), "--json").json["id"]
    cli("export-diff", "-r", repo, first, tmp_path / "x", "--from", second).assert_one_line_error(
        2, "is not older than")
    cli("export-diff", "-r", repo, second, tmp_path / "x", "--from", other).assert_one_line_error(
        2, "is of the chain")
    cli("export-diff", "-r", repo, "0123456789abcdef", tmp_path / "x").assert_one_line_error(3)
    assert not (tmp_path / "x").exists()
    (tmp_path / "kept").write_bytes(b"mine")
    cli("export-diff", "-r", repo, first, tmp_path / "kept").assert_one_line_error(4, "--force")
    assert (tmp_path / "kept").read_bytes() == b"mine"
    assert cli("export-diff", "-r", repo, first, tmp_path / "kept", "--force").code == 0
    assert (tmp_path / "kept").read_bytes().startswith(rbd_diff.HEADER)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []

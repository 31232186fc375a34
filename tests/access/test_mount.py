"""``cbtbackup mount``: backups as image files; loop-mount a partition read-only and read the files."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tests.access.conftest import Started, mounted, need, stop
from tests.attach.conftest import checksums, copy_tree, sh
from tests.conftest import RunCli

MiB = 1 << 20


PART_START = 2048 * 512  # the partition partitioned_image makes


def partition_node(loop: str) -> str:
    """The first partition of a loop device set up with -P. Without udev (containers) nothing makes its
    /dev node: make it from sysfs."""
    name = Path(loop).name
    node, sysfs = f"{loop}p1", Path(f"/sys/block/{name}/{name}p1/dev")
    deadline = time.monotonic() + 3
    while not os.path.exists(node) and time.monotonic() < deadline:
        if sysfs.exists():
            major, minor = map(int, sysfs.read_text().split(":"))
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
            break
        time.sleep(0.05)
    return node


def partition_loops(image: Path, read_only: bool) -> tuple[list[str], str]:
    """Loop devices for the image's partition (see LoopMount), and the partition's device."""
    ro = ["-r"] if read_only else []
    loops = [sh("losetup", "-P", "-f", "--show", *ro, str(image)).strip()]
    part = partition_node(loops[0])
    if not os.path.exists(part):
        size = os.path.getsize(image) - PART_START
        part = sh("losetup", "-f", "--show", *ro, "-o", str(PART_START), "--sizelimit", str(size),
                  str(image)).strip()
        loops.append(part)
    return loops, part


class LoopMount:
    """The partition of an image, through a loop device, mounted (read-only unless told). With ``-P`` as a
    user would; on a kernel built without partition tables (this machine's: no MSDOS or EFI partition
    support) the kernel finds no partition, and the loop device is set up at the partition's offset."""

    def __init__(self, image: Path, where: Path, read_only: bool) -> None:
        self.loops, part = partition_loops(image, read_only)
        where.mkdir(exist_ok=True)
        sh("mount", *(["-o", "ro"] if read_only else []), part, str(where))
        self.where = where

    def close(self) -> None:
        sh("umount", str(self.where))
        for loop in reversed(self.loops):
            sh("losetup", "-d", loop)


def partitioned_image(path: Path, size: int, mkfs: list[str], fill: Path) -> dict[str, str]:
    """An image with one partition holding a file system with real files; their checksums."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=f"start={PART_START // 512}, type=83\n", text=True, check=True)
    loops, part = partition_loops(path, read_only=False)
    try:
        sh(*mkfs, part)
    finally:
        for loop in reversed(loops):
            sh("losetup", "-d", loop)
    filled = LoopMount(path, fill, read_only=False)
    try:
        copy_tree(fill)
        (fill / "big.bin").write_bytes(os.urandom(3 * MiB))
        sh("sync")
        return checksums(fill)
    finally:
        filled.close()


@pytest.fixture
def loops() -> Iterator[list[LoopMount]]:
    held: list[LoopMount] = []
    yield held
    for m in reversed(held):
        subprocess.run(["umount", str(m.where)], capture_output=True)
        for loop in reversed(m.loops):
            subprocess.run(["losetup", "-d", loop], capture_output=True)


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_mount_then_loop_mount_a_partition(cli: RunCli, tmp_path: Path, foreground: Started,
                                           loops: list[LoopMount], fs: str) -> None:
    mkfs = ["mkfs.ext4", "-q", "-F"] if fs == "ext4" else ["mkfs.xfs", "-q", "-f"]
    need(mkfs[0], "e2fsprogs" if fs == "ext4" else "xfsprogs")
    image = tmp_path / "disk.img"
    expected = partitioned_image(image, (64 if fs == "ext4" else 320) * MiB, mkfs, tmp_path / "fill")
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    backup = cli("full", "-r", repo, image, "--json").json
    mnt = tmp_path / "backups"
    mnt.mkdir()
    server = foreground("mount", "-r", repo, mnt, ready=mounted(mnt))
    chain = mnt / backup["name"]
    entries = sorted(os.listdir(chain))
    assert f"{backup['id']}.img" in entries and "latest.img" in entries and len(entries) == 3
    assert os.path.getsize(chain / "latest.img") == os.path.getsize(image)
    loops.append(LoopMount(chain / "latest.img", tmp_path / "files", read_only=True))
    assert checksums(tmp_path / "files") == expected
    loops.pop().close()
    code, out, _ = stop(server)
    assert code == 0 and "unmounted" in out and not os.path.ismount(mnt)
    # One backup only, chosen as restore chooses.
    single = foreground("mount", "-r", repo, mnt, "--backup", f"{backup['name']}@latest~0", ready=mounted(mnt))
    assert f"{backup['id']}.img" in os.listdir(mnt / backup["name"]) and len(os.listdir(mnt)) == 1
    assert stop(single)[0] == 0


def test_a_corrupt_chunk_fails_only_the_file_it_holds(cli: RunCli, tmp_path: Path, foreground: Started,
                                                      loops: list[LoopMount]) -> None:
    image = tmp_path / "disk.img"
    partitioned_image(image, 64 * MiB, ["mkfs.ext4", "-q", "-F"], tmp_path / "fill")
    data = image.read_bytes()
    repo = tmp_path / "repo"
    cli("init", "-r", repo, "--encryption", "none")  # to find the chunk by its plain digest
    backup = cli("full", "-r", repo, image, "--json").json
    # big.bin is 3 MiB of random bytes: the middle MiB of the image it lies in is one of its chunks.
    fill = tmp_path / "fill"
    source = LoopMount(image, fill, read_only=True)
    head = (fill / "big.bin").read_bytes()[MiB:MiB + 4096]
    source.close()
    where = data.find(head)
    assert where > 0
    chunk = where // MiB + 1  # surely inside the file: its next MiB
    digest = blake3.blake3(data[chunk * MiB:(chunk + 1) * MiB]).hexdigest()
    victim = next((repo / "chunks").rglob(digest))
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))
    mnt = tmp_path / "backups"
    mnt.mkdir()
    server = foreground("mount", "-r", repo, mnt, ready=mounted(mnt))
    loops.append(LoopMount(mnt / backup["name"] / "latest.img", tmp_path / "files", read_only=True))
    with pytest.raises(OSError) as failed:
        (tmp_path / "files" / "big.bin").read_bytes()
    assert failed.value.errno == errno.EIO
    assert (tmp_path / "files" / "json" / "__init__.py").read_bytes()  # other files read fine
    loops.pop().close()
    _, _, err = stop(server)
    assert digest in err  # the log names the chunk

"""A real file system on an attached volume: ext4 through the loop device, backed up and restored."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from tests.attach.conftest import Attached, LoopImage, checksums, copy_tree, fsck_clean, sh
from tests.conftest import RunCli


def ext4_on_attached(cli: RunCli, vol: Attached, tmp_path: Path) -> tuple[Path, Path]:
    """Attach with a loop device, make ext4 on it, mount it; a new repository beside. (repo, mountpoint)"""
    vol.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo).code == 0
    sh("mkfs.ext4", "-q", "-F", vol.loop)
    fs = tmp_path / "fs"
    vol.mount(fs)
    return repo, fs


def test_ext4_full_and_three_incrementals(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    vol = attached_image
    repo, fs = ext4_on_attached(cli, vol, tmp_path)
    copy_tree(fs)
    points: list[tuple[str, dict[str, str]]] = []

    def backup(kind: str) -> None:
        sh("sync")
        expected = checksums(fs)
        result = cli(kind, "-r", repo, vol.loop, "--freeze", fs, "--json")
        assert result.code == 0, result.err
        assert result.json["provider"] == "userspace"
        if kind == "incr":
            assert result.json["method"] == "cbt"
            assert result.json["bytes_scanned"] < 24 << 20  # only the changed blocks
        points.append((result.json["id"], expected))

    backup("full")
    shutil.rmtree(fs / "asyncio")  # delete
    with open(fs / "json" / "decoder.py", "a") as f:  # modify
        f.write("\n# changed after the full backup\n")
    (fs / "notes.txt").write_text("added\n" * 1000)  # add
    backup("incr")
    shutil.copytree(fs / "email", fs / "email-copy")
    (fs / "json" / "encoder.py").unlink()
    backup("incr")
    (fs / "big.bin").write_bytes(os.urandom(3 << 20))
    (fs / "notes.txt").write_text("rewritten\n")
    backup("incr")

    vol.umount(fs)
    assert cli("detach", vol.mountdir).code == 0
    for i, (backup_id, expected) in enumerate(points):
        restored = tmp_path / f"restored-{i}.img"
        assert cli("restore", "-r", repo, backup_id, restored).code == 0
        clean, report = fsck_clean(restored)
        assert clean, f"backup {i}: fsck found problems:\n{report}"
        mounted = LoopImage(restored, tmp_path / f"ro-{i}")
        try:
            assert checksums(mounted.where) == expected, f"backup {i}: the tree differs"
        finally:
            mounted.close()


def test_backup_while_another_process_writes(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    """With --freeze, the snapshot holds exactly the files that were complete at the take."""
    vol = attached_image
    repo, fs = ext4_on_attached(cli, vol, tmp_path)
    (fs / "out").mkdir()
    stop = threading.Event()
    done: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 2000:  # at most 40 MB: the file system holds 96 MiB
            name = f"file-{i:05d}"
            tmp = fs / "out" / (name + ".part")
            tmp.write_bytes(os.urandom(20_000))
            tmp.rename(fs / "out" / name)  # complete files appear by rename
            done.append(name)
            i += 1
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        result = cli("full", "-r", repo, vol.loop, "--freeze", fs, "--json")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert result.code == 0, result.err
    restored = tmp_path / "restored.img"
    assert cli("restore", "-r", repo, result.json["id"], restored).code == 0
    clean, report = fsck_clean(restored)
    assert clean, report
    mounted = LoopImage(restored, tmp_path / "ro")
    try:
        names = sorted(p.name for p in (mounted.where / "out").iterdir())
        complete = [n for n in names if not n.endswith(".part")]
        assert complete, "the writer had written files before the backup"
        assert complete == done[: len(complete)]  # a prefix of what was written, in order, no gaps
        assert len(complete) < len(done)  # and the writer went on after the take
        for name in complete:
            assert (mounted.where / "out" / name).stat().st_size == 20_000
    finally:
        mounted.close()


def test_daemon_killed_while_writing(cli: RunCli, attached_image: Attached, tmp_path: Path) -> None:
    vol = attached_image
    repo, fs = ext4_on_attached(cli, vol, tmp_path)
    copy_tree(fs)
    sh("sync")
    assert cli("full", "-r", repo, vol.loop, "--freeze", fs).code == 0
    writer = subprocess.Popen(["sh", "-c", f"i=0; while true; do head -c 65536 /dev/urandom > {fs}/w$i; "
                               "i=$((i+1)); done"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    vol.kill()
    time.sleep(0.3)
    writer.kill()
    writer.wait()
    subprocess.run(["umount", "-l", str(fs)], capture_output=True)
    vol.mounts.remove(fs)

    vol.attach()  # cleans the dead mount and its loop device, then serves again
    repair = subprocess.run(["fsck.ext4", "-y", "-f", vol.loop], capture_output=True, text=True)
    assert repair.returncode in (0, 1, 2), repair.stdout + repair.stderr  # repaired (or nothing to do)
    assert subprocess.run(["fsck.ext4", "-n", "-f", vol.loop], capture_output=True).returncode == 0
    inc = cli("incr", "-r", repo, vol.loop, "--json")
    assert inc.code == 0, inc.err
    assert inc.json["method"] == "scan"  # a killed tracker is never trusted
    assert any("not closed cleanly" in n for n in inc.json["notes"]), inc.json["notes"]
    assert cli("detach", vol.mountdir).code == 0
    restored = tmp_path / "restored.img"
    assert cli("restore", "-r", repo, "latest", restored).code == 0
    assert restored.read_bytes() == vol.image.read_bytes()

"""Several RBD images at one instant through one RBD group snapshot, against a real cluster.

A writer process appends record n to image A and, once that write returned, record n to image B, while
group backups of both run again and again: in no backup may B hold a record that A does not. Each image
keeps one anchor snapshot of ours between runs and no group snapshot; the chains restore byte for byte and
a single backup of a member continues its chain by CBT."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine.rbd.cluster import DEBIAN_BINDINGS, bindings
from tests.conftest import RunCli
from tests.rbd.conftest import POOL, Image, MiB, documented_backup_role

RECORD = struct.Struct("<Q")
WRITER = """
import struct, sys, time
sys.path.append(sys.argv[5])
import rados, rbd
cluster = rados.Rados(conffile=sys.argv[1]); cluster.connect(timeout=30)
io = cluster.open_ioctx(sys.argv[2])
a, b = rbd.Image(io, sys.argv[3]), rbd.Image(io, sys.argv[4])
n = 0
print("ready", flush=True)
while True:
    n += 1
    a.write(struct.pack("<Q", n) * 512, (n % 8) * 4096 + 4096)  # a record to A, then its echo to B
    a.write(struct.pack("<Q", n), 0)
    b.write(struct.pack("<Q", n), 0)
"""


class RbdGroupFixture:
    def __init__(self, ioctx: Any, name: str) -> None:
        _, self.rbd = bindings()
        self.ioctx, self.name = ioctx, name
        self.rbd.RBD().group_create(ioctx, name)
        self.group = self.rbd.Group(ioctx, name)

    def add(self, image: Image) -> None:
        self.group.add_image(self.ioctx, image.name)

    def snapshots(self) -> list[str]:
        return [str(s["name"]) for s in self.group.list_snaps()]

    def remove(self) -> None:
        for snap in self.snapshots():
            self.group.remove_snap(snap)
        for member in list(self.group.list_images()):
            self.group.remove_image(self.ioctx, member["name"])
        self.rbd.RBD().group_remove(self.ioctx, self.name)


@pytest.fixture
def make_group(ioctx: Any) -> Any:
    made: list[RbdGroupFixture] = []

    def make(*images: Image) -> RbdGroupFixture:
        group = RbdGroupFixture(ioctx, f"g-{images[0].name}")
        made.append(group)
        for image in images:
            group.add(image)
        return group

    yield make
    for group in made:
        group.remove()


def record(data: bytes) -> int:
    value: int = RECORD.unpack_from(data, 0)[0]
    return value


def group_backup(cli: RunCli, repo: Path, kind: str, *images: Image | object) -> list[dict[str, Any]]:
    """``kind`` of ``images`` in one run (further arguments are passed on)."""
    result = cli(kind, "-r", repo, *(i.source if isinstance(i, Image) else i for i in images), "--json")
    assert result.code == 0, result.err
    backups: list[dict[str, Any]] = result.json["backups"]
    return backups


def restored(cli: RunCli, repo: Path, backup_id: str, where: Path) -> bytes:
    out = where / f"{backup_id}.img"
    assert cli("restore", "-r", repo, backup_id, out).code == 0
    return out.read_bytes()


def test_a_group_backup_takes_its_images_at_one_instant(cli: RunCli, repo: Path, make_rbd: Any, make_group: Any,
                                                       ceph_conf: str, tmp_path: Path) -> None:
    a, b = make_rbd(8 * MiB), make_rbd(8 * MiB)
    group = make_group(a, b)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, ceph_conf, POOL, a.name, b.name, DEBIAN_BINDINGS],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        runs = [group_backup(cli, repo, "full", a, b)]
        for _ in range(5):
            runs.append(group_backup(cli, repo, "incr", a, b))
        alive = writer.poll() is None  # no write of the writer failed while the group snapshots were taken
    finally:
        writer.kill()
        writer.wait()
    assert alive, "the writer's writes failed during the group snapshots"
    seen = []
    for run in runs:
        by_source = {backup["source"]: backup for backup in run}
        in_a = record(restored(cli, repo, by_source[a.source]["id"], tmp_path))
        in_b = record(restored(cli, repo, by_source[b.source]["id"], tmp_path))
        assert in_b <= in_a, f"B holds record {in_b} but A only {in_a}: not one instant"
        seen.append(in_a)
    assert seen[-1] > seen[0] > 0, seen  # the writer really wrote during the backups
    assert all(backup["method"] == "cbt" for run in runs[1:] for backup in run), runs

    # Quiet now: a group incremental and a single one of A continue the chains, byte for byte.
    last = {backup["source"]: backup for backup in group_backup(cli, repo, "incr", a, b)}
    assert restored(cli, repo, last[a.source]["id"], tmp_path) == a.content()
    assert restored(cli, repo, last[b.source]["id"], tmp_path) == b.content()
    a.write(3 * MiB, b"single" * 1000)
    single = cli("incr", "-r", repo, a.source, "--json")
    assert single.code == 0 and single.json["method"] == "cbt", single.err
    assert restored(cli, repo, single.json["id"], tmp_path) == a.content()
    assert group.snapshots() == []  # the group snapshot is gone after each run
    assert len(a.snapshots()) == 1 and len(b.snapshots()) == 1  # one anchor of ours each


def test_images_outside_one_group_are_refused_with_nothing_left(cli: RunCli, repo: Path, make_rbd: Any,
                                                                make_group: Any) -> None:
    a, b, c = make_rbd(4 * MiB), make_rbd(4 * MiB), make_rbd(4 * MiB)
    cli("full", "-r", repo, a.source, b.source).assert_one_line_error(2, "in no RBD group")
    make_group(a)
    make_group(b)
    cli("full", "-r", repo, a.source, b.source).assert_one_line_error(2, "different RBD groups")
    assert a.snapshots() == [] and b.snapshots() == []
    no_lock = make_rbd(4 * MiB, fast_diff=False)
    make_group(c, no_lock)
    cli("full", "-r", repo, c.source, no_lock.source).assert_one_line_error(2, "exclusive-lock")
    assert c.snapshots() == [] and no_lock.snapshots() == []
    assert cli("list", "-r", repo, "--json").json["backups"] == []


def test_a_group_snapshot_a_killed_run_left_is_removed_with_a_notice(cli: RunCli, repo: Path, make_rbd: Any,
                                                                     make_group: Any, tmp_path: Path) -> None:
    a, b = make_rbd(4 * MiB), make_rbd(4 * MiB)
    group = make_group(a, b)
    a.write(0, b"a" * 4096)
    group.group.create_snap("cbtbackup-group-0123456789ab")
    group.group.create_snap("users-own")
    result = cli("full", "-r", repo, a.source, b.source)
    assert result.code == 0, result.err
    assert "removed the group snapshot" in result.err and "cbtbackup-group-0123456789ab" in result.err
    assert group.snapshots() == ["users-own"]  # the user's own group snapshot is left alone


def test_the_documented_backup_role_takes_group_snapshots(cli: RunCli, repo: Path, make_rbd: Any, make_group: Any,
                                                          ceph_conf: str, tmp_path: Path) -> None:
    with documented_backup_role(ceph_conf, tmp_path) as (user, keyring):
        role = ("--ceph-id", user, "--keyring", keyring)
        a, b = make_rbd(4 * MiB), make_rbd(4 * MiB)
        group = make_group(a, b)
        a.write(0, os.urandom(MiB))
        assert cli("full", "-r", repo, a.source, b.source, *role).code == 0
        b.write(MiB, os.urandom(MiB))
        runs = group_backup(cli, repo, "incr", a, b, *role)
        assert [r["method"] for r in runs] == ["cbt", "cbt"]
        assert restored(cli, repo, runs[1]["id"], tmp_path) == b.content()
        assert group.snapshots() == []

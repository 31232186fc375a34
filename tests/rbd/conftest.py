"""A real Ceph cluster's RBD pool (the session's one-node cluster, tests/servers/ceph-cluster), images made
and written through librbd, and what each image held at the moment a backup took it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbtbackup.engine.rbd.cluster import bindings
from cbtbackup.errors import CbtError
from tests.conftest import RunCli
from tests.servers.s3_servers import CephCluster

MiB = 1 << 20
POOL = "rbd"


@pytest.fixture(scope="session")
def ceph_conf(ceph_cluster: CephCluster | str) -> str:
    if isinstance(ceph_cluster, str):
        pytest.skip(ceph_cluster)
    try:
        bindings()
    except CbtError as e:
        pytest.skip(str(e))
    return ceph_cluster.conf


@pytest.fixture(scope="session")
def ioctx(ceph_conf: str) -> Iterator[Any]:
    rados, _ = bindings()
    cluster = rados.Rados(conffile=ceph_conf)
    cluster.connect(timeout=30)
    io = cluster.open_ioctx(POOL)
    yield io
    io.close()
    cluster.shutdown()


@pytest.fixture(autouse=True)
def cluster_env(ceph_conf: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The commands find the cluster as the rbd command does, through CEPH_CONF."""
    monkeypatch.setenv("CEPH_CONF", ceph_conf)
    monkeypatch.setenv("CBTBACKUP_CACHE_DIR", str(tmp_path / "cache"))


class Image:
    """An RBD image of the test pool, written through librbd."""

    def __init__(self, ioctx: Any, size: int, fast_diff: bool) -> None:
        _, rbd = bindings()
        self.rbd, self.ioctx = rbd, ioctx
        self.name = f"t-{uuid.uuid4().hex[:10]}"
        features = rbd.RBD_FEATURE_LAYERING
        if fast_diff:
            features |= rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
        rbd.RBD().create(ioctx, self.name, size, old_format=False, features=features)
        self.size = size

    @property
    def source(self) -> str:
        return f"rbd:{POOL}/{self.name}"

    def open(self, **kwargs: Any) -> Any:
        return self.rbd.Image(self.ioctx, self.name, **kwargs)

    def write(self, offset: int, data: bytes) -> None:
        with self.open() as image:
            image.write(data, offset)

    def discard(self, offset: int, length: int) -> None:
        with self.open() as image:
            image.discard(offset, length)

    def content(self) -> bytes:
        with self.open(read_only=True) as image:
            return bytes(image.read(0, image.size()))

    def snapshots(self) -> list[str]:
        with self.open(read_only=True) as image:
            return [s["name"] for s in image.list_snaps()]

    def remove(self) -> None:
        with self.open() as image:
            for snap in list(image.list_snaps()):
                if image.is_protected_snap(snap["name"]):
                    image.unprotect_snap(snap["name"])
                image.remove_snap(snap["name"])
        self.rbd.RBD().remove(self.ioctx, self.name)


@pytest.fixture
def make_rbd(ioctx: Any) -> Iterator[Any]:
    made: list[Image] = []

    def make(size: int = 32 * MiB, *, fast_diff: bool = True) -> Image:
        image = Image(ioctx, size, fast_diff)
        made.append(image)
        return image

    yield make
    for image in made:
        with contextlib.suppress(Exception):  # a test that removed or renamed it itself
            image.remove()


def remove_image(ioctx: Any, name: str) -> None:
    """An image a test made by name (a restore target), with its snapshots."""
    _, rbd = bindings()
    try:
        with rbd.Image(ioctx, name) as image:
            for snap in list(image.list_snaps()):
                image.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)
    except rbd.ImageNotFound:
        pass


@pytest.fixture
def repo(cli: RunCli, tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert cli("init", "-r", path, "--encryption", "none").code == 0
    return path


def read_image(ioctx: Any, name: str) -> bytes:
    _, rbd = bindings()
    with rbd.Image(ioctx, name, read_only=True) as image:
        return bytes(image.read(0, image.size()))


__all__ = ["POOL", "Image", "MiB", "read_image", "remove_image"]


def documented_backup_caps(pool: str) -> tuple[str, str]:
    """The mon and osd caps docs/ceph.md gives the backup role, for ``pool`` (the docs say ``vms``)."""
    text = (Path(__file__).parents[2] / "docs" / "ceph.md").read_text()
    block = re.search(r"ceph auth get-or-create client\.cbtbackup \\\n\s+mon '([^']+)' \\\n\s+osd '([^']+)'", text)
    assert block is not None, "docs/ceph.md no longer shows the backup role's caps"
    return block.group(1), block.group(2).replace("pool=vms", f"pool={pool}")


@contextlib.contextmanager
def documented_backup_role(ceph_conf: str, where: Path) -> Iterator[tuple[str, Path]]:
    """A cephx user with docs/ceph.md's backup caps on the test pool, and its keyring; removed after."""
    mon, osd = documented_backup_caps(POOL)
    user = f"cbt-{os.urandom(3).hex()}"
    keyring = where / "backup.keyring"
    subprocess.run(["ceph", "-c", ceph_conf, "auth", "get-or-create", f"client.{user}", "mon", mon, "osd", osd,
                    "-o", str(keyring)], check=True, capture_output=True)
    try:
        yield user, keyring
    finally:
        subprocess.run(["ceph", "-c", ceph_conf, "auth", "del", f"client.{user}"], capture_output=True)

"""A scan incremental after a CBT reset stores only what changed, at tracking-block granularity, whatever
mix of full, CBT and scan backups came before — with the tracker's local state and without it."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume, default_state_dir
from cbtbackup.pipeline.backup import BackupOptions, BackupResult, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository

MiB = 1 << 20
BS = 64 << 10
SIZE = 32 * MiB
BLOCKS = SIZE // BS


def scattered_blocks(rng: random.Random, fraction: float) -> list[int]:
    return sorted(rng.sample(range(BLOCKS), max(1, int(BLOCKS * fraction))))


def write_through_engine(image: Path, blocks: list[int]) -> None:
    with TrackedVolume.open(image) as vol:
        for b in blocks:
            vol.write(b * BS, os.urandom(BS))


def write_around(image: Path, blocks: list[int]) -> None:
    with open(image, "r+b") as f:
        for b in blocks:
            f.seek(b * BS)
            f.write(os.urandom(BS))


@pytest.mark.parametrize("local_state", [True, False], ids=["with local state", "fresh state directory"])
@pytest.mark.parametrize("history", ["full", "full,cbt,cbt,cbt", "full,cbt,scan,cbt"])
def test_scan_after_a_reset_stores_at_most_twice_the_changed_bytes(
    tmp_path: Path, local_state: bool, history: str
) -> None:
    rng = random.Random(history)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(SIZE))
    TrackedVolume.track(image).close()
    repo = Repository.init(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"), RepositoryConfig())

    def backup(kind: str) -> BackupResult:
        return run_backup(repo, BackupOptions(str(image), kind, "disk"))  # type: ignore[arg-type]

    for step in history.split(","):
        if step == "full":
            backup("full")
        elif step == "cbt":
            write_through_engine(image, scattered_blocks(rng, 0.01))
            assert backup("incr").manifest.method == "cbt"
        else:
            write_around(image, scattered_blocks(rng, 0.01))
            assert backup("incr").manifest.method == "scan"

    changed = scattered_blocks(rng, 0.01)
    write_around(image, changed)  # 1 % of the blocks, 64 KiB each, behind the tracker: a reset
    if not local_state:  # a new machine: the tracker's state is gone, tracking starts anew
        shutil.rmtree(default_state_dir(image))
        TrackedVolume.track(image).close()
    result = backup("incr")
    stats = result.manifest.stats
    assert result.manifest.method == "scan"
    assert stats.bytes_scanned == SIZE  # the image is read once
    changed_bytes = len(changed) * BS
    assert stats.bytes_changed == changed_bytes
    assert stats.bytes_stored <= 2 * changed_bytes, (stats, changed_bytes)

    target = tmp_path / "restored.img"
    run_restore(repo, RestoreOptions(result.manifest.ref.id, str(target)))
    assert target.read_bytes() == image.read_bytes()


def test_a_scan_stores_again_what_the_previous_backup_can_no_longer_give(tmp_path: Path) -> None:
    """A previous chunk that cannot be read back is not trusted: its bytes are stored anew."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4 * MiB))
    repo = Repository.init(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"), RepositoryConfig())
    full = run_backup(repo, BackupOptions(str(image), "full", "disk", provider="scan"))
    with open(image, "r+b") as f:
        f.seek(MiB + 5)
        f.write(b"changed")
    first = full.manifest.extents[1]
    (tmp_path / "repo" / repo.chunk_key(first.digest)).unlink()
    incr = run_backup(repo, BackupOptions(str(image), "incr", "disk", provider="scan"))
    assert incr.manifest.stats.bytes_changed == MiB  # the whole extent: nothing to compare with
    target = tmp_path / "restored.img"
    run_restore(repo, RestoreOptions(incr.manifest.ref.id, str(target)))
    assert target.read_bytes() == image.read_bytes()

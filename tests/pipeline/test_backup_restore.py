"""The pipelines called as a library, with a serial executor and a tiny in-flight budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.integrity import run_verify
from cbtbackup.pipeline.progress import NullProgress
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.pipeline.workers import PipelineConfig, SerialExecutor
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.location import open_store
from cbtbackup.repo.repository import Repository
from tests.conftest import MakeImage
from tests.pipeline.fetch_counting import count_chunk_fetches

SERIAL = PipelineConfig(workers=1, max_inflight_bytes=1, executor_factory=lambda n: SerialExecutor())
KiB = 1 << 10


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    loc = str(tmp_path / "repo")
    return Repository.init(open_store(loc, create=True), loc, RepositoryConfig(chunk_size=64 * KiB))


@pytest.mark.parametrize("config", [SERIAL, PipelineConfig(max_inflight_bytes=128 * KiB)], ids=["serial", "pool"])
def test_cbt_incremental_at_block_granularity(
    repo: Repository, make_image: MakeImage, tmp_path: Path, config: PipelineConfig
) -> None:
    image = make_image(2 << 20)
    TrackedVolume.track(image, block_size=4 * KiB).close()
    full = run_backup(repo, BackupOptions(str(image), "full"), config=config)
    assert len(full.manifest.extents) == 32  # 2 MiB in 64 KiB chunks
    with TrackedVolume.open(image) as vol:
        vol.write(10 * KiB, b"a")  # one 4 KiB block
        vol.write(100 * KiB, os.urandom(20 * KiB))  # blocks 25..29
    progress = NullProgress()
    inc = run_backup(repo, BackupOptions(str(image), "incr"), progress, config)
    assert inc.manifest.method == "cbt" and progress.notices == []
    assert [(p.offset, p.length) for p in inc.manifest.extents] == [(8 * KiB, 4 * KiB), (100 * KiB, 20 * KiB)]
    # The two short extents share one chunk, each at its place in it.
    assert [p.chunk_offset for p in inc.manifest.extents] == [0, 4 * KiB]
    assert len({p.digest for p in inc.manifest.extents}) == 1 and inc.manifest.stats.chunks_new == 1
    assert inc.manifest.stats.bytes_scanned == 24 * KiB
    out = tmp_path / "out.img"
    run_restore(repo, RestoreOptions(inc.manifest.ref.id, str(out)), config=config)
    assert out.read_bytes() == image.read_bytes()
    assert run_verify(repo, None, config=config).chunks_checked == 33


def test_scan_incremental_records_only_differences(repo: Repository, make_image: MakeImage) -> None:
    image = make_image(1 << 20)
    run_backup(repo, BackupOptions(str(image), "full"), config=SERIAL)
    with open(image, "r+b") as f:
        f.seek(200 * KiB)
        f.write(b"x")
    inc = run_backup(repo, BackupOptions(str(image), "incr"), config=SERIAL)
    assert inc.manifest.method == "scan"
    assert [(p.offset, p.length) for p in inc.manifest.extents] == [(192 * KiB, 64 * KiB)]
    again = run_backup(repo, BackupOptions(str(image), "incr"), config=SERIAL)
    assert len(again.manifest.extents) == 0 and again.manifest.stats.bytes_changed == 0


def test_chunks_referenced_twice_are_fetched_once(repo: Repository, make_image: MakeImage, tmp_path: Path) -> None:
    image = make_image(1 << 20, zeros=True)
    block = os.urandom(64 * KiB)
    with open(image, "r+b") as f:
        for i in range(0, 16, 3):
            f.seek(i * 64 * KiB)
            f.write(block)
    fetched = count_chunk_fetches(repo)
    run_backup(repo, BackupOptions(str(image), "full"), config=SERIAL)
    result = run_restore(repo, RestoreOptions("latest", str(tmp_path / "o")), config=SERIAL)
    assert result.chunks_fetched == 1 and len(fetched) == 1
    assert (tmp_path / "o").read_bytes() == image.read_bytes()


def test_small_chunks_are_put_together_a_megabyte_at_a_time_and_fetched_once(
    repo: Repository, make_image: MakeImage, tmp_path: Path
) -> None:
    image = make_image(4 << 20)
    block = os.urandom(64 * KiB)
    with open(image, "r+b") as f:  # one block repeated in every window: a chunk four windows use
        for i in range(0, 64, 5):
            f.seek(i * 64 * KiB)
            f.write(block)
    fetched = count_chunk_fetches(repo)
    full = run_backup(repo, BackupOptions(str(image), "full"), config=SERIAL)
    distinct = len({p.digest for p in full.manifest.extents})
    assert distinct == 64 - 13 + 1
    result = run_restore(repo, RestoreOptions("latest", str(tmp_path / "o")),
                         config=PipelineConfig(max_inflight_bytes=2 << 20))
    assert result.chunks_fetched == distinct and len(fetched) == distinct
    assert (tmp_path / "o").read_bytes() == image.read_bytes()

"""Trust, but verify the tracking: a CBT incremental re-reads a sample of what its provider reports unchanged.

A provider that under-reports is simulated by hiding a block from the map of a real userspace snapshot (the
data really changed, through the engine; only the report the backup plans from is wrong). The check must
catch it, make the backup a scan that restores byte for byte, and distrust the tracking until a backup has
scanned past it."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.providers import UserspaceProvider
from cbtbackup.engine.providers.base import CbtState
from cbtbackup.errors import UsageError
from cbtbackup.pipeline.backup import BackupOptions, BackupResult, backup_session, run_backup
from cbtbackup.pipeline.scan_compare import PreviousImage
from cbtbackup.pipeline.tracking_check import UnchangedSample, check_unchanged, draw_blocks, unchanged_runs
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.key_file import read_key_file
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository
from tests.pipeline.test_no_silent_miss import Story, read_all

MiB = 1 << 20
BS = 64 << 10
WHOLE = UnchangedSample(size=None, fraction=1.0)  # re-read everything reported unchanged: a certain catch


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(8 * MiB))
    TrackedVolume.track(path).close()
    return path


def hide_block(cbt: CbtState, block: int) -> CbtState:
    """The same report with one changed block said to be unchanged (marked as last changed long ago)."""
    lying = bytearray(cbt.map)
    assert lying[block] == cbt.info.changes_number, "the block must really be reported changed"
    lying[block] = 0
    return dataclasses.replace(cbt, map=bytes(lying))


def lying_incr(story: Story, image: Path, sample: UnchangedSample | None) -> BackupResult:
    """Write two blocks through the engine, then back up with the second hidden from the report."""
    with TrackedVolume.open(image) as vol:
        vol.write(1 * MiB, b"reported" * 100)
        vol.write(5 * MiB + 7, b"hidden from the report" * 10)
    at_take = read_all(image)  # before the take: a reader while the snapshot is held costs a scan of its own
    session = UserspaceProvider(image).open_snapshot()
    try:
        assert session.cbt is not None
        session.cbt = hide_block(session.cbt, 5 * MiB // session.cbt.info.block_size)
        result = backup_session(story.repo, session, "incr", story.name, unchanged_sample=sample)
        story.taken[result.manifest.ref.id] = at_take
        return result
    finally:
        session.close()


def test_an_under_reported_block_is_caught_and_the_backup_scans(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    result = lying_incr(story, image, WHOLE)
    m = result.manifest
    assert m.method == "scan"
    assert result.tracking_mismatch is not None and "under-reported" in result.tracking_mismatch
    assert f"offset {5 * MiB}" in result.tracking_mismatch
    assert any(n.startswith("warning: the change tracking of") and "scan incremental" in n for n in result.notes)
    assert m.stats.tracking_mismatches == 1 and m.stats.bytes_sampled_unchanged > 0
    assert m.cbt is None  # a checkpoint of lying tracking vouches for nothing
    assert m.stats.bytes_changed >= 2 * BS  # both writes are in, the hidden one too
    data = result.to_json()
    assert data["tracking_mismatch"] == result.tracking_mismatch and data["tracking_mismatches"] == 1
    story.check_restores()


def test_after_a_caught_lie_the_next_incremental_scans_and_then_cbt_resumes(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    lying_incr(story, image, WHOLE)
    with TrackedVolume.open(image) as vol:
        assert "under-reporting" in vol.reset_reason  # the userspace tracker started a new generation
        vol.write(2 * MiB, b"after the lie")
    second = story.backup()
    assert second.manifest.method == "scan"
    assert any("caught the change tracking under-reporting" in n for n in second.notes), second.notes
    assert second.manifest.cbt is not None
    with TrackedVolume.open(image) as vol:
        vol.write(3 * MiB, b"tracked again")
    third = story.backup()
    assert third.manifest.method == "cbt" and third.tracking_mismatch is None
    story.check_restores()


def test_without_the_check_the_same_lie_loses_the_write(tmp_path: Path, image: Path) -> None:
    """What the check is for: with it off, the hidden write is not in the backup."""
    story = Story(tmp_path, image)
    story.backup("full")
    result = lying_incr(story, image, UnchangedSample.parse("0"))
    assert result.manifest.method == "cbt" and result.manifest.stats.bytes_sampled_unchanged == 0
    target = tmp_path / "restored.img"
    from cbtbackup.pipeline.restore import RestoreOptions, run_restore

    run_restore(story.repo, RestoreOptions(result.manifest.ref.id, str(target)))
    assert target.read_bytes() != story.taken[result.manifest.ref.id]


def test_honest_tracking_passes_the_default_check_and_stays_cbt(tmp_path: Path, image: Path) -> None:
    story = Story(tmp_path, image)
    story.backup("full")
    for i in range(3):
        with TrackedVolume.open(image) as vol:
            vol.write(i * MiB + 100, os.urandom(3000))
        result = story.backup()
        s = result.manifest.stats
        assert result.manifest.method == "cbt" and result.tracking_mismatch is None
        # Default: 4 MiB or 0.1 % of 8 MiB, whichever is smaller -> 8 KiB, rounded up to one tracking block.
        assert s.bytes_sampled_unchanged == BS and s.tracking_mismatches == 0
    story.check_restores()


def test_a_zero_block_reported_unchanged_is_checked_against_zeros(tmp_path: Path) -> None:
    """Sparse images: zeros the previous backup recorded as zeros compare without a repository read; data
    written over them and hidden is still caught."""
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    TrackedVolume.track(path).close()
    story = Story(tmp_path, path)
    story.backup("full")
    result = lying_incr(story, path, WHOLE)
    assert result.manifest.method == "scan" and result.manifest.stats.tracking_mismatches == 1
    story.check_restores()


# -- the parts ---------------------------------------------------------------------------------------------

def test_unchanged_runs_are_the_complement_of_the_changed() -> None:
    assert unchanged_runs([], 10) == [(0, 10)]
    assert unchanged_runs([(0, 10)], 10) == []
    assert unchanged_runs([(2, 3), (7, 1)], 10) == [(0, 2), (5, 2), (8, 2)]
    assert unchanged_runs([(0, 1), (9, 5)], 10) == [(1, 8)]


def test_draw_blocks_are_distinct_in_range_and_never_changed() -> None:
    rng = random.Random(7)
    unchanged = unchanged_runs([(2, 3), (7, 1)], 1000)
    blocks = draw_blocks(unchanged, 50, rng)
    assert len(blocks) == 50 == len(set(blocks)) and blocks == sorted(blocks)
    assert not {2, 3, 4, 7} & set(blocks) and all(0 <= b < 1000 for b in blocks)
    assert draw_blocks(unchanged, 10_000, rng) == [b for b in range(1000) if b not in {2, 3, 4, 7}]


class CountingImage:
    def __init__(self, data: bytes) -> None:
        self.data, self.size, self.read_bytes = data, len(data), 0

    def read(self, offset: int, length: int) -> bytes:
        self.read_bytes += length
        return self.data[offset:offset + length]


def test_the_check_reads_its_budget_and_nothing_reported_changed(tmp_path: Path) -> None:
    story = Story(tmp_path, tmp_path / "unused")
    data = os.urandom(4 * MiB)
    source = tmp_path / "disk.img"
    source.write_bytes(data)
    from cbtbackup.pipeline.backup import BackupOptions, run_backup

    full = run_backup(story.repo, BackupOptions(str(source), "full", "d", provider="scan"))
    _, resolved = story.repo.resolve(full.manifest.ref)
    image = CountingImage(data)
    check = check_unchanged(image, [(0, 60)], BS, PreviousImage(resolved, story.repo.get_chunk, BS, set()),
                            story.repo.chunk_id, UnchangedSample.parse("256KiB"), random.Random(1))
    assert check.mismatch is None and check.bytes_checked == image.read_bytes == 256 << 10
    changed_image = CountingImage(data[:63 * BS] + bytes(BS))  # the last block changed, reported unchanged
    check = check_unchanged(changed_image, [(0, 60)], BS,
                            PreviousImage(resolved, story.repo.get_chunk, BS, set()),
                            story.repo.chunk_id, UnchangedSample.parse("100%"), random.Random(1))
    assert check.mismatch == (63 * BS, BS) and check.bytes_checked == 4 * BS


@pytest.mark.parametrize(("text", "size", "fraction"), [
    ("0", 0, None), ("4MiB", 4 << 20, None), ("0.1%", None, 0.001), ("100%", None, 1.0),
])
def test_sample_parses(text: str, size: int | None, fraction: float | None) -> None:
    assert UnchangedSample.parse(text) == UnchangedSample(size=size, fraction=fraction)


def test_default_budget_is_the_smaller_of_4mib_and_a_thousandth() -> None:
    assert UnchangedSample().budget(1 << 40) == 4 << 20
    assert UnchangedSample().budget(1 << 30) == (1 << 30) // 1000
    assert UnchangedSample.parse("0").budget(1 << 40) == 0


@pytest.mark.parametrize("text", ["lots", "120%", "-1%", "x%"])
def test_bad_samples_are_one_clear_error(text: str) -> None:
    with pytest.raises(UsageError) as e:
        UnchangedSample.parse(text)
    assert "\n" not in str(e.value) and str(e.value)


class WriteOnlyStory(Story):
    """The same story told by a host holding only a write-only key; restores are made with the master key."""

    def __init__(self, root: Path, source: Path) -> None:
        (root / "repo").mkdir()
        full = Repository.init(LocalStore(root / "repo"), str(root / "repo"),
                               RepositoryConfig(encryption="aes-256-gcm"), "a passphrase")
        full.write_only_key(str(root / "host.key"))
        key = read_key_file(root / "host.key")
        self.root, self.source, self.name, self.state_dir = root, source, "disk", None
        self.repo = Repository.open(LocalStore(root / "repo"), str(root / "repo"), key)
        self.taken = {}

    def backup(self, kind: str = "incr") -> BackupResult:
        at_take = read_all(self.source)
        result = run_backup(self.repo, BackupOptions(str(self.source), kind, self.name,  # type: ignore[arg-type]
                                                     unchanged_sample=WHOLE))
        self.taken[result.manifest.ref.id] = at_take
        return result

    def check_restores(self) -> None:
        self.repo = Repository.open(LocalStore(self.root / "repo"), str(self.root / "repo"), "a passphrase")
        super().check_restores()


def test_a_write_only_host_catches_the_same_lie(tmp_path: Path, image: Path) -> None:
    """It cannot read the previous chunks, so it checks the blocks it sampled at the previous backup."""
    story = WriteOnlyStory(tmp_path, image)
    story.backup("full")
    result = lying_incr(story, image, WHOLE)
    assert result.manifest.method == "scan"
    assert result.tracking_mismatch is not None and f"offset {5 * MiB}" in result.tracking_mismatch
    assert result.manifest.cbt is None
    story.check_restores()

"""CBT incrementals pack their short extents into shared chunks: every point of a packed chain restores
byte for byte, and what goes around the tracker, a killed run, a damaged pack and forget + prune keep
working over packs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.model.extent_map import ZERO_DIGEST, ExtentMap
from cbtbackup.pipeline.backup import BackupOptions, BackupResult, run_backup
from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.integrity import run_verify
from cbtbackup.pipeline.packing import ExtentPacker
from cbtbackup.pipeline.progress import NullProgress
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.pipeline.restore_stream import stream_image
from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository
from tests.pipeline.fetch_counting import count_chunk_fetches

KiB, MiB = 1 << 10, 1 << 20
BS = 64 * KiB
SIZE = 8 * MiB


class Stop(Exception):
    pass


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    rng = random.Random(7)
    # Half random, half text-like, so packs hold both stored-raw and compressed data.
    path.write_bytes(rng.randbytes(SIZE // 2) + rng.randbytes(SIZE // 4).hex().encode())
    TrackedVolume.track(path, block_size=BS).close()
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    location = tmp_path / "repo"
    return Repository.init(LocalStore(location), str(location), RepositoryConfig(chunk_size=MiB))


def scattered_writes(image: Path, rng: random.Random, count: int) -> None:
    """``count`` tracking blocks rewritten through the engine: random, text-like, or zeros."""
    with TrackedVolume.open(image) as vol:
        for block in rng.sample(range(SIZE // BS), count):
            kind = block % 3
            data = rng.randbytes(BS) if kind == 0 else rng.randbytes(BS // 2).hex().encode() if kind == 1 \
                else bytes(BS)
            vol.write(block * BS, data)


def incr(repo: Repository, image: Path) -> BackupResult:
    result = run_backup(repo, BackupOptions(str(image), "incr"))
    assert result.manifest.method == "cbt", result.notes
    return result


def stored_chunks(manifest: Manifest) -> set[bytes]:
    return {p.digest for p in manifest.extents} - {ZERO_DIGEST}


def stored_chunks_of(resolved: ExtentMap) -> set[bytes]:
    return {resolved.digest_at(i) for i in range(len(resolved))} - {ZERO_DIGEST}


def restores_to(repo: Repository, backup_id: str, expected: bytes, out: Path) -> None:
    run_restore(repo, RestoreOptions(backup_id, str(out), force=out.exists()))
    assert out.read_bytes() == expected


def test_the_packer_fills_chunks_in_order_and_never_overflows() -> None:
    packer = ExtentPacker(100)
    assert packer.add(0, b"a" * 40) is None
    assert packer.add(1, b"b" * 60) is None  # exactly full still fits
    full = packer.add(2, b"c" * 1)
    assert full is not None and bytes(full.data) == b"a" * 40 + b"b" * 60
    assert full.members == [(0, 0, 40), (1, 40, 60)]
    assert packer.add(3, b"d" * 100) is not None  # "c" alone: its own pack
    last = packer.flush()
    assert last is not None and last.members == [(3, 0, 100)]
    assert packer.flush() is None
    with pytest.raises(ValueError, match="longer than a chunk"):
        packer.add(4, b"e" * 101)


def test_every_point_of_a_packed_chain_restores_byte_for_byte(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    rng = random.Random(1)
    points = [(run_backup(repo, BackupOptions(str(image), "full")).manifest.ref.id, image.read_bytes())]
    for _ in range(6):
        scattered_writes(image, rng, 24)  # 24 scattered blocks of 128: 1.5 MiB, some over earlier ones
        result = incr(repo, image)
        stats = result.manifest.stats
        # 24 extents of 64 KiB (fewer if writes touched neighbours) in a few shared chunks, not one each.
        assert len(result.manifest.extents) > 4 * stats.chunks_new and stats.chunks_new <= 2
        assert any(p.chunk_offset for p in result.manifest.extents)
        points.append((result.manifest.ref.id, image.read_bytes()))
    out = tmp_path / "out.img"
    for backup_id, expected in points:
        restores_to(repo, backup_id, expected, out)
    assert run_verify(repo, None).ok


def test_writes_around_the_tracker_after_packed_incrementals_are_found_by_a_scan(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    rng = random.Random(2)
    run_backup(repo, BackupOptions(str(image), "full"))
    for _ in range(3):
        scattered_writes(image, rng, 20)
        incr(repo, image)
    around = sorted(rng.sample(range(SIZE // BS), 6))
    with open(image, "r+b") as f:  # behind the tracker's back
        for block in around:
            f.seek(block * BS + 1000)
            f.write(os.urandom(100))
    previous = repo.resolve(repo.find("latest"))[1]
    fetched = count_chunk_fetches(repo)
    result = run_backup(repo, BackupOptions(str(image), "incr"))
    assert result.manifest.method == "scan"
    # Each previous chunk is read back at most once, however many extents it serves.
    assert len(fetched) == len(set(fetched)) and set(fetched) <= stored_chunks_of(previous)
    # The scan compared against bytes held in packs and stored only the six blocks that differ.
    assert result.manifest.stats.bytes_changed == 6 * BS
    assert [p.offset for p in result.manifest.extents] == [b * BS for b in around]
    restores_to(repo, result.manifest.ref.id, image.read_bytes(), tmp_path / "out.img")


def test_a_killed_packed_incremental_is_finished_by_the_next_run_from_the_packs_it_stored(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    run_backup(repo, BackupOptions(str(image), "full"))
    scattered_writes(image, random.Random(3), 30)

    def die(point: str) -> None:
        if point == "before-commit":
            raise Stop()

    with pytest.raises(Stop):
        run_backup(repo, BackupOptions(str(image), "incr"), hook=die)
    again = Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
    result = incr(again, image)
    # The same changes make the same packs: all found, none written twice.
    assert result.manifest.stats.chunks_new == 0 and result.manifest.stats.chunks_reused >= 2
    restores_to(again, result.manifest.ref.id, image.read_bytes(), tmp_path / "out.img")


def test_a_damaged_pack_is_read_again_in_every_range_it_held(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    run_backup(repo, BackupOptions(str(image), "full"))
    scattered_writes(image, random.Random(4), 12)
    first = incr(repo, image).manifest
    (victim,) = stored_chunks(first)
    path = tmp_path / "repo" / repo.chunk_key(victim)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert not run_verify(repo, None).ok  # quarantines the pack
    again = Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
    healed = incr(again, image)  # nothing written since: only what verify lost is read
    lost = {(p.offset, p.length) for p in first.extents if p.digest == victim}
    assert {(p.offset, p.length) for p in healed.manifest.extents} >= lost
    assert any("re-reading" in n for n in healed.notes)
    restores_to(again, healed.manifest.ref.id, image.read_bytes(), tmp_path / "out.img")


def test_prune_keeps_a_pack_while_any_kept_backup_uses_part_of_it(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    rng = random.Random(5)
    run_backup(repo, BackupOptions(str(image), "full"))
    scattered_writes(image, rng, 16)
    packed = incr(repo, image).manifest
    with TrackedVolume.open(image) as vol:  # overwrite most, not all, of what the pack holds
        for p in list(packed.extents)[:-2]:
            vol.write(p.offset, os.urandom(p.length))
    latest = incr(repo, image).manifest
    run_forget(repo, ForgetOptions(ids=(packed.ref.id,)))  # folded into the latest, which still uses it
    run_prune(repo, PruneOptions())
    assert stored_chunks(packed) & {p.digest for p in repo.resolve(repo.find(latest.ref.id))[1]}
    restores_to(repo, latest.ref.id, image.read_bytes(), tmp_path / "out.img")
    assert run_verify(repo, None).ok


def test_restore_onto_a_stale_copy_fetches_each_pack_once(repo: Repository, image: Path, tmp_path: Path) -> None:
    rng = random.Random(6)
    full = run_backup(repo, BackupOptions(str(image), "full")).manifest
    stale = tmp_path / "stale.img"
    restores_to(repo, full.ref.id, image.read_bytes(), stale)
    for _ in range(3):
        scattered_writes(image, rng, 20)
        latest = incr(repo, image).manifest
    result = run_restore(repo, RestoreOptions(latest.ref.id, str(stale), onto_existing=True))
    assert stale.read_bytes() == image.read_bytes()
    resolved = repo.resolve(repo.find(latest.ref.id))[1]
    # Every piece differs from the stale copy's hash; still each chunk is fetched once.
    assert result.chunks_fetched <= len(stored_chunks_of(resolved))
    assert result.bytes_written <= 3 * 20 * BS  # only the blocks the incrementals changed


@pytest.mark.parametrize("kept_bytes", [64 * MiB, 1], ids=["kept until last use", "let go at once"])
def test_a_packed_chain_streams_in_order_within_its_memory_bound(
    repo: Repository, image: Path, tmp_path: Path, kept_bytes: int
) -> None:
    rng = random.Random(8)
    run_backup(repo, BackupOptions(str(image), "full"))
    for _ in range(4):
        scattered_writes(image, rng, 20)
        latest = incr(repo, image).manifest
    resolved = repo.resolve(repo.find(latest.ref.id))[1]
    out = tmp_path / "stream.img"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        written, fetched = stream_image(repo, resolved, fd, NullProgress(), PipelineConfig(), kept_bytes)
    finally:
        os.close(fd)
    assert written == SIZE and out.read_bytes() == image.read_bytes()
    distinct = len(stored_chunks_of(resolved))
    # Kept: each chunk fetched once. Let go: packs serving several places are fetched again for each.
    assert fetched == distinct if kept_bytes > 1 else fetched > distinct


def write_around_the_tracker(image: Path, rng: random.Random, count: int) -> list[int]:
    """Blocks rewritten with plain writes the tracker never sees (the next incremental must scan)."""
    blocks = rng.sample(range(SIZE // BS), count)
    with open(image, "r+b") as f:
        for block in blocks:
            f.seek(block * BS)
            f.write(rng.randbytes(BS) if block % 2 else rng.randbytes(BS // 2).hex().encode())
    return blocks


def test_a_scan_incremental_packs_its_scattered_runs_and_restores_exact(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    rng = random.Random(21)
    run_backup(repo, BackupOptions(str(image), "full", provider="scan"))
    changed = write_around_the_tracker(image, rng, 24)
    scan = run_backup(repo, BackupOptions(str(image), "incr", provider="scan")).manifest
    assert scan.method == "scan"
    data = [p for p in scan.extents if not p.is_zero]
    assert sum(p.length for p in data) == 24 * BS  # only the blocks that changed
    chunks = stored_chunks(scan)
    # 24 scattered blocks in as many extents: packed 16 to a 1 MiB chunk, not a chunk each.
    assert len(chunks) == 2 and len(changed) == 24
    assert any(p.chunk_offset for p in data)
    restores_to(repo, scan.ref.id, image.read_bytes(), tmp_path / "out.img")


def test_a_scan_packs_the_same_whatever_order_its_workers_finish_in(repo: Repository, image: Path) -> None:
    """Packs depend on the changes alone: a scan run again over the same changes (a killed run's next run)
    makes the same packs, so it finds them stored, with one worker or four."""
    rng = random.Random(22)
    full = run_backup(repo, BackupOptions(str(image), "full", provider="scan")).manifest
    write_around_the_tracker(image, rng, 30)
    first = run_backup(repo, BackupOptions(str(image), "incr", provider="scan"),
                       config=PipelineConfig(workers=1)).manifest
    again = run_backup(repo, BackupOptions(str(image), "incr", provider="scan", since=full.ref.id),
                       config=PipelineConfig(workers=4)).manifest
    assert first.method == again.method == "scan" and again.parent == full.ref
    assert again.extents == first.extents and again.stats.chunks_new == 0

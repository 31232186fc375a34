"""Prune repacks the windows of fulls that forget has made costly to read: every backup still restores
byte for byte, the latest reads about what a fresh full reads, a repack killed at any manifest write
leaves every backup restorable and the next prune finishes it, and a chain whose backup runs is left
alone."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.model.extent_map import ZERO_DIGEST
from cbtbackup.model.retention import RetentionPolicy
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.progress import NullProgress
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.pipeline.repack import chunk_lengths, costly_windows, run_repack
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.pipeline.restore_windows import Window
from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import Manifest
from cbtbackup.repo.repository import Repository
from tests.conftest import RunCli
from tests.pipeline.test_packing import BS, SIZE, image, incr, repo, scattered_writes

__all__ = ["image", "repo"]


class Killed(Exception):
    pass


def writes_in_first_half(image: Path, rng: random.Random, count: int) -> None:
    """``count`` blocks of the image's first half rewritten through the engine: its second half's windows
    stay as the full stored them."""
    with TrackedVolume.open(image) as vol:
        for block in rng.sample(range(SIZE // 2 // BS), count):
            vol.write(block * BS, rng.randbytes(BS) if block % 2 else rng.randbytes(BS // 2).hex().encode())


def aged_chain(repo: Repository, image: Path, days: int = 12, keep: int = 3) -> dict[str, bytes]:
    """A full, ``days`` incrementals of 6 scattered blocks each, forget down to ``keep``: the image each
    kept backup holds, by id."""
    rng = random.Random(11)
    images = {run_backup(repo, BackupOptions(str(image), "full")).manifest.ref.id: image.read_bytes()}
    for _ in range(days):
        writes_in_first_half(image, rng, 6)
        images[incr(repo, image).manifest.ref.id] = image.read_bytes()
    forgot = run_forget(repo, ForgetOptions(policy=RetentionPolicy(last=keep)))
    for ref in forgot.removed:
        del images[ref.id]
    return images


def assert_restores(repo: Repository, images: dict[str, bytes], tmp_path: Path) -> None:
    fresh = Repository.open(LocalStore(Path(repo.location)), repo.location)  # nothing cached in memory
    for backup_id, expected in images.items():
        out = tmp_path / f"{backup_id}.img"
        run_restore(fresh, RestoreOptions(backup_id, str(out), force=out.exists()))
        assert out.read_bytes() == expected, backup_id
        out.unlink()


def full_of(repo: Repository) -> tuple[Manifest, list[Window]]:
    manifests = [repo.load_manifest(r, fresh=True) for r in repo.list_backups()]
    full = next(m for m in manifests if m.parent is None)
    return full, costly_windows(full.extents, repo.config.chunk_size, chunk_lengths(manifests))


def test_prune_repacks_a_folded_full_and_every_backup_restores_the_same(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    images = aged_chain(repo, image)
    full, costly = full_of(repo)
    assert costly, "forget folded nine incrementals into the full: some windows must be costly"
    before = len({p.digest for p in full.extents} - {ZERO_DIGEST})
    result = run_prune(repo, PruneOptions())
    rp = result.repack
    assert rp.fulls_repacked == 1 and rp.windows_rewritten == len(costly)
    assert rp.bytes_rewritten == sum(w.length for w in costly) <= SIZE // 2  # only the costly windows
    assert result.chunks_deleted > 0  # what the old windows used, and no backup needs any more
    assert_restores(repo, images, tmp_path)
    full, costly = full_of(repo)
    assert costly == []
    after = len({p.digest for p in full.extents} - {ZERO_DIGEST})
    assert after < before
    assert all(m.map_digest_next is None for m in (repo.load_manifest(r) for r in repo.list_backups()))
    again = run_prune(repo, PruneOptions())
    assert again.repack.windows_rewritten == 0 and again.chunks_deleted == 0  # nothing left to do


def test_a_repacked_window_is_the_chunk_a_full_of_that_image_stores(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    aged_chain(repo, image, days=6, keep=1)  # only the newest is kept: the full holds today's image
    run_prune(repo, PruneOptions())
    full, _ = full_of(repo)
    before = {p.digest for p in full.extents}
    fresh = run_backup(repo, BackupOptions(str(image), "full", name="again")).manifest
    assert fresh.stats.chunks_new == 0  # every window a full stores is already there
    assert {p.digest for p in fresh.extents} <= before | {ZERO_DIGEST}


def test_dry_run_and_no_repack_change_nothing(repo: Repository, image: Path) -> None:
    aged_chain(repo, image)
    keys = {r.key: repo.store.get(r.key) for r in repo.list_backups()}
    dry = run_prune(repo, PruneOptions(dry_run=True))
    assert dry.repack.windows_rewritten > 0 and dry.repack.chunks_new == 0
    run_prune(repo, PruneOptions(repack=False))
    assert {r.key: repo.store.get(r.key) for r in repo.list_backups()} == keys


@pytest.mark.parametrize("kill_at", range(1, 5))
def test_a_repack_killed_at_any_manifest_write_leaves_every_backup_restorable(
    repo: Repository, image: Path, tmp_path: Path, kill_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = aged_chain(repo, image)  # the full and two incrementals on it: four manifest writes
    real = Repository.rewrite_manifest
    writes = [0]

    def dying(self: Repository, manifest: object) -> None:
        writes[0] += 1
        if writes[0] == kill_at:
            raise Killed
        real(self, manifest)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "rewrite_manifest", dying)
    with pytest.raises(Killed):
        run_prune(repo, PruneOptions())
    monkeypatch.setattr(Repository, "rewrite_manifest", real)
    assert_restores(repo, images, tmp_path)  # whatever the step, every backup resolves to its image
    for ref in repo.list_backups():  # the lock of the killed run is not left held by this process
        repo.load_manifest(ref, fresh=True)
    run_prune(repo, PruneOptions())
    assert all(m.map_digest_next is None for m in (repo.load_manifest(r, fresh=True) for r in repo.list_backups()))
    assert full_of(repo)[1] == []
    assert_restores(repo, images, tmp_path)


def test_a_chain_whose_backup_runs_is_left_for_the_next_prune(repo: Repository, image: Path, tmp_path: Path) -> None:
    images = aged_chain(repo, image)
    name = repo.list_backups()[0].name
    other = Repository.open(LocalStore(Path(repo.location)), repo.location)
    progress = NullProgress()
    keys = {r.key: repo.store.get(r.key) for r in repo.list_backups()}
    with other.locks.acquire("incr backup", exclusive=(f"chain:{name}",), shared=("repo",)):
        busy = run_repack(repo, progress, PipelineConfig())  # prune's first step, beside the backup
    assert busy.chains_busy == [name] and busy.windows_rewritten == 0
    assert any("busy" in n and name in n for n in progress.notices)
    assert {r.key: repo.store.get(r.key) for r in repo.list_backups()} == keys
    later = run_prune(repo, PruneOptions())  # the backup ended
    assert later.repack.windows_rewritten > 0 and later.repack.chains_busy == []
    assert_restores(repo, images, tmp_path)


def test_an_incremental_after_a_repack_continues_by_cbt_and_restores_exact(
    repo: Repository, image: Path, tmp_path: Path
) -> None:
    images = aged_chain(repo, image)
    run_prune(repo, PruneOptions())
    scattered_writes(image, random.Random(3), 20)
    latest = incr(repo, image).manifest
    images[latest.ref.id] = image.read_bytes()
    assert_restores(repo, images, tmp_path)


def test_a_full_whose_chunk_is_damaged_is_left_as_it_is_and_prune_goes_on(repo: Repository, image: Path) -> None:
    aged_chain(repo, image)
    costly = full_of(repo)[1]
    victim = next(p.digest for w in costly for p in w.pieces if not p.is_zero)
    path = Path(repo.location) / repo.chunk_key(victim)
    path.write_bytes(b"not a chunk any more")
    keys = {r.key: repo.store.get(r.key) for r in repo.list_backups()}
    progress = NullProgress()
    result = run_prune(repo, PruneOptions(), progress)
    assert result.repack.fulls_repacked == 0 and result.repack.windows_rewritten == 0
    assert any("left as it is" in n and "verify" in n for n in progress.notices)
    assert {r.key: repo.store.get(r.key) for r in repo.list_backups()} == keys  # no manifest changed
    assert path.exists()  # the damaged chunk is verify's to quarantine, not prune's to delete


def test_prune_on_the_command_line_says_what_it_repacked(
    repo: Repository, image: Path, tmp_path: Path, cli: RunCli
) -> None:
    images = aged_chain(repo, image)
    dry = cli("prune", "-r", repo.location, "--dry-run")
    assert dry.code == 0 and "repack: would rewrite" in dry.out and "windows" in dry.out
    skipped = cli("prune", "-r", repo.location, "--no-repack", "--json")
    assert skipped.code == 0 and skipped.json["repack"]["windows_rewritten"] == 0
    done = cli("prune", "-r", repo.location, "--json")
    assert done.code == 0 and done.json["repack"]["windows_rewritten"] > 0
    assert done.json["repack"]["chunks_new"] > 0 and done.json["chunks_deleted"] > 0
    latest = max(images, key=lambda i: repo.find(i).stamp)
    out = tmp_path / "latest.img"
    assert cli("restore", "-r", repo.location, latest, out).code == 0
    assert out.read_bytes() == images[latest]

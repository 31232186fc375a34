"""What a local store makes durable at a sync: exactly what it changed or depends on, never less.

A power cut cannot be staged here, so these tests watch the calls that make data durable (fsync of a
path, syncfs of the file system) while real files are written, and check that every file a commit
depends on, and every directory whose entries changed, is covered.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from cbtbackup.errors import StorageError
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo import durability
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.location import open_store
from cbtbackup.repo.repository import Repository
from tests.conftest import MakeImage

KiB = 1 << 10


class Watch:
    """Records the durability calls, and still makes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsynced: list[str] = []
        self.syncfs = 0
        real_fsync, real_syncfs = durability._fsync, durability._syncfs

        def fsync(path: str) -> None:
            self.fsynced.append(path)
            real_fsync(path)

        def syncfs(root: Path) -> None:
            self.syncfs += 1
            real_syncfs(root)

        monkeypatch.setattr(durability, "_fsync", fsync)
        monkeypatch.setattr(durability, "_syncfs", syncfs)

    def clear(self) -> None:
        self.fsynced.clear()
        self.syncfs = 0


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    return Watch(monkeypatch)


def test_a_sync_covers_the_files_put_and_the_directories_they_changed(tmp_path: Path, watch: Watch) -> None:
    store = LocalStore(tmp_path)
    store.put("manifests/a", b"1")
    store.put("manifests/b", b"2")
    assert store.put_if_absent("locks/x", b"3")
    store.sync()
    assert watch.syncfs == 0
    assert sorted(watch.fsynced) == sorted([
        str(tmp_path / "manifests/a"), str(tmp_path / "manifests/b"), str(tmp_path / "locks/x"),
        str(tmp_path / "manifests"), str(tmp_path / "locks"),  # the renames and links into them
        str(tmp_path), str(tmp_path.parent),  # where directories were made on the way
    ])
    watch.clear()
    store.sync()  # nothing changed since
    assert watch.fsynced == [] and watch.syncfs == 0


def test_a_delete_makes_its_directory_durable(tmp_path: Path, watch: Watch) -> None:
    store = LocalStore(tmp_path)
    store.put("chunks/ab/cd", b"x")
    store.sync()
    watch.clear()
    store.delete("chunks/ab/cd")
    store.delete("chunks/ab/never-there")  # nothing removed: nothing to make durable
    store.sync()
    assert watch.fsynced == [str(tmp_path / "chunks/ab")] and watch.syncfs == 0


def test_a_file_removed_before_the_sync_is_passed_over(tmp_path: Path, watch: Watch) -> None:
    store = LocalStore(tmp_path)
    store.put("locks/l", b"x")
    store.delete("locks/l")
    store.sync()
    assert str(tmp_path / "locks") in watch.fsynced


def test_many_changes_are_one_syncfs(tmp_path: Path, watch: Watch) -> None:
    store = LocalStore(tmp_path)
    for i in range(durability.FSYNC_LIMIT + 1):
        store.put(f"chunks/{i:02x}/{i}", b"x")
    store.sync()
    assert watch.syncfs == 1 and watch.fsynced == []
    watch.clear()
    store.put("manifests/m", b"m")  # the next commit is small again
    store.sync()
    assert watch.syncfs == 0 and str(tmp_path / "manifests/m") in watch.fsynced


def test_a_failed_sync_is_tried_again_in_full(tmp_path: Path, watch: Watch, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    store.put("manifests/a", b"1")

    def failing(path: str) -> None:
        raise StorageError(f"sync of {path} failed: Input/output error")

    monkeypatch.setattr(durability, "_fsync", failing)
    with pytest.raises(StorageError):
        store.sync()
    monkeypatch.undo()
    again = Watch(monkeypatch)
    store.sync()
    assert again.syncfs == 1  # what the failed sync did not cover is not forgotten


def test_init_makes_the_new_directory_durable(tmp_path: Path, watch: Watch) -> None:
    location = tmp_path / "new" / "repo"
    Repository.init(open_store(str(location), create=True), str(location), RepositoryConfig(encryption="none"))
    assert {str(location / "config"), str(location), str(tmp_path / "new"), str(tmp_path)} <= set(watch.fsynced)


def test_a_backup_that_changed_nothing_flushes_only_its_own_objects(
    tmp_path: Path, make_image: MakeImage, watch: Watch
) -> None:
    image = make_image(1 << 20)
    TrackedVolume.track(image, block_size=64 * KiB).close()
    location = str(tmp_path / "repo")
    repo = Repository.init(open_store(location, create=True), location,
                           RepositoryConfig(chunk_size=64 * KiB, encryption="none"))
    run_backup(repo, BackupOptions(str(image), "full"))
    watch.clear()
    incr = run_backup(repo, BackupOptions(str(image), "incr"))
    assert incr.manifest.stats.chunks_new == 0
    assert watch.syncfs == 0  # another program's dirty data is not this backup's to flush
    assert str(tmp_path / "repo" / incr.manifest.ref.key) in watch.fsynced


def test_chunks_a_killed_run_left_are_made_durable_by_the_backup_that_uses_them(
    tmp_path: Path, make_image: MakeImage, watch: Watch
) -> None:
    image = make_image(256 * KiB)
    TrackedVolume.track(image, block_size=64 * KiB).close()
    location = str(tmp_path / "repo")
    config = RepositoryConfig(chunk_size=64 * KiB, encryption="none")
    Repository.init(open_store(location, create=True), location, config)
    # A run killed after storing its chunks and before any sync: another process, another store object.
    killed = Repository.open(open_store(location), location)
    data = image.read_bytes()
    digests = []
    for off in range(0, len(data), 64 * KiB):
        digest = killed.sealer.chunk_id(data[off: off + 64 * KiB])
        killed.put_chunk_object(digest, killed.codec.encode(data[off: off + 64 * KiB], digest))
        digests.append(digest)
    watch.clear()
    repo = Repository.open(open_store(location), location)
    full = run_backup(repo, BackupOptions(str(image), "full"))
    assert full.manifest.stats.chunks_new == 0 and full.manifest.stats.chunks_reused == 4
    chunk_files = {os.path.join(location, repo.chunk_key(d)) for d in digests}
    assert chunk_files <= set(watch.fsynced)

"""Prune deletes what no backup needs — and never what a backup running beside it reuses.

The races are made with the pipelines' pause points, not with sleeps: a prune paused after its mark while a
backup reuses a leftover chunk; a backup paused (holding its chunks, before its manifest) while a prune
runs; a prune paused in its sweep while a backup tries to start."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from cbtbackup.errors import BusyError
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.prune import DigestPrefixes, PruneOptions, run_prune
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository

MiB = 1 << 20


class Stop(Exception):
    """Ends a backup before its commit, as a kill would."""


def new_repo(root: Path) -> Repository:
    return Repository.init(LocalStore(root / "repo"), str(root / "repo"), RepositoryConfig())


def chunks(repo: Repository) -> set[str]:
    return {o.key for o in repo.store.list("chunks/")}


def leave_leftovers(repo: Repository, image: Path) -> set[str]:
    """A full backup killed before its manifest: its chunks stay, referenced by nothing."""
    before = chunks(repo)

    def die(point: str) -> None:
        if point == "before-commit":
            raise Stop()

    with pytest.raises(Stop):
        run_backup(repo, BackupOptions(str(image), "full", "x", provider="scan"), hook=die)
    return chunks(repo) - before


def restores(repo: Repository, backup_id: str, expected: bytes, out: Path) -> None:
    run_restore(repo, RestoreOptions(backup_id, str(out)))
    assert out.read_bytes() == expected
    out.unlink()


def test_prune_deletes_leftovers_and_keeps_what_backups_need(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    kept = tmp_path / "kept.img"
    kept.write_bytes(os.urandom(3 * MiB))
    backup = run_backup(repo, BackupOptions(str(kept), "full", "kept", provider="scan"))
    dead = tmp_path / "dead.img"
    dead.write_bytes(os.urandom(4 * MiB))
    leftovers = leave_leftovers(repo, dead)
    assert len(leftovers) == 4
    stale_tmp = tmp_path / "repo" / "chunks" / ".tmp-killed.1234"
    stale_tmp.write_bytes(b"half a chunk")
    os.utime(stale_tmp, (time.time() - 7200,) * 2)
    dry = run_prune(repo, PruneOptions(dry_run=True))
    assert (dry.chunks_unused, dry.chunks_deleted) == (4, 0) and chunks(repo) >= leftovers
    result = run_prune(repo, PruneOptions())
    assert result.chunks_deleted == 4 and result.incomplete_removed == 1 and not stale_tmp.exists()
    assert not (chunks(repo) & leftovers)
    restores(repo, backup.manifest.ref.id, kept.read_bytes(), tmp_path / "out")
    assert run_prune(repo, PruneOptions()).chunks_deleted == 0  # nothing more to do


@pytest.mark.parametrize("waits", [False, True], ids=["backup-fails-busy", "backup-waits"])
@pytest.mark.parametrize("point", ["locked", "deleting"])
def test_a_backup_cannot_start_while_prune_sweeps(tmp_path: Path, point: str, waits: bool) -> None:
    repo = new_repo(tmp_path)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2 * MiB))
    for _ in range(300):  # enough leftovers for the sweep to pass its first batch
        repo.store.put(repo.chunk_key(os.urandom(32)), b"leftover")
    leftovers = leave_leftovers(repo, image)  # the backup below would like to reuse these
    outcome: dict[str, object] = {}

    def during(p: str) -> None:
        if p != point:
            return
        if not waits:
            with pytest.raises(BusyError, match="prune"):
                run_backup(repo, BackupOptions(str(image), "full", "x", provider="scan"))
            return
        other = Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
        thread = threading.Thread(target=lambda: outcome.setdefault("result", run_backup(
            other, BackupOptions(str(image), "full", "x", provider="scan", wait_lock=60))))
        thread.start()
        outcome["thread"] = thread
        time.sleep(0.3)  # the backup is now waiting for the sweep
        assert thread.is_alive()

    run_prune(repo, PruneOptions(), hook=during)
    assert not (chunks(repo) & leftovers)
    if waits:
        thread = outcome["thread"]
        assert isinstance(thread, threading.Thread)
        thread.join(60)
        result = outcome["result"]
        restores(repo, result.manifest.ref.id, image.read_bytes(), tmp_path / "out")  # type: ignore[attr-defined]


def test_a_backup_that_reuses_a_leftover_while_prune_marks_keeps_it(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3 * MiB))
    leftovers = leave_leftovers(repo, image)
    made = {}

    def during(point: str) -> None:
        if point == "marked":  # the leftovers are candidates now; a backup reuses them and commits
            other = Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
            made["backup"] = run_backup(other, BackupOptions(str(image), "full", "x", provider="scan"))
            assert made["backup"].manifest.stats.chunks_new == 0  # every chunk reused, none put again

    result = run_prune(repo, PruneOptions(), hook=during)
    assert result.chunks_unused == 3 and result.chunks_deleted == 0
    assert chunks(repo) >= leftovers
    restores(repo, made["backup"].manifest.ref.id, image.read_bytes(), tmp_path / "out")


@pytest.mark.parametrize("point", ["snapshot-taken", "before-commit"])
def test_a_prune_cannot_sweep_while_a_backup_runs(tmp_path: Path, point: str) -> None:
    repo = new_repo(tmp_path)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3 * MiB))
    leftovers = leave_leftovers(repo, image)
    waiting: dict[str, object] = {}

    def during(p: str) -> None:
        if p != point:
            return
        other = Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo"))
        with pytest.raises(BusyError, match="backup"):
            run_prune(other, PruneOptions())
        assert chunks(repo) >= leftovers  # it marked them, but could not sweep
        thread = threading.Thread(target=lambda: waiting.setdefault("result", run_prune(
            Repository.open(LocalStore(tmp_path / "repo"), str(tmp_path / "repo")), PruneOptions(wait_lock=60))))
        thread.start()
        waiting["thread"] = thread
        time.sleep(0.3)
        assert thread.is_alive()  # waiting for this backup to end

    backup = run_backup(repo, BackupOptions(str(image), "full", "x", provider="scan"), hook=during)
    thread = waiting["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(60)
    assert chunks(repo) >= leftovers  # the committed backup reuses them
    restores(repo, backup.manifest.ref.id, image.read_bytes(), tmp_path / "out")


def test_digest_prefixes() -> None:
    digests = [os.urandom(32) for _ in range(1000)]
    index = DigestPrefixes()
    index.add_table(b"".join(digests[:500]))
    index.freeze()
    assert all(d in index for d in digests[:500])
    assert not any(d in index for d in digests[500:])

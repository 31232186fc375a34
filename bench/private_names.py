"""What private object names cost: listing every backup, one chain's backups, and finding the newest, in a
fresh process's view (nothing learned yet), plain names against private ones, side by side in one run.

    python bench/private_names.py [--chains 50] [--backups 40] [--rounds 5]

Local directory repositories, encrypted alike; the backups are small manifests (one extent each), so what is
measured is naming and listing, not data. Prints median seconds and the private/plain ratio per question.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.repo.config import PRIVATE_NAMES_VERSION, RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.manifest import BackupRef, Manifest
from cbtbackup.repo.repository import Repository

PASSPHRASE = "bench passphrase"


def fill(root: Path, private: bool, chains: int, backups: int) -> None:
    config = RepositoryConfig(encryption="aes-256-gcm", names="private" if private else "",
                              version=PRIVATE_NAMES_VERSION if private else 1)
    repo = Repository.init(LocalStore(root), str(root), config, PASSPHRASE)
    data = os.urandom(4096)
    digest = repo.chunk_id(data)
    repo.put_chunk_object(digest, repo.codec.encode(data, digest))
    extents = ExtentMap()
    extents.append(0, len(data), digest)
    for c in range(chains):
        ref = BackupRef.new(f"host{c:03d}-srv-vm-disk.img")
        for _ in range(backups):
            repo.save_manifest(Manifest(ref, "full", "full", None, time.time(), "/srv/vm/disk.img", "scan",
                                        len(data), 1 << 20, extents.map_digest(), extents))
            ref = ref.just_after()


def timed(action: Callable[[Repository], object], root: Path, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        repo = Repository.open(LocalStore(root), str(root), PASSPHRASE)  # a new process: nothing learned
        started = time.perf_counter()
        action(repo)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--backups", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, private = Path(tmp, "plain"), Path(tmp, "private")
        for root, is_private in ((plain, False), (private, True)):
            root.mkdir()
            fill(root, is_private, args.chains, args.backups)
        questions: dict[str, Callable[[Repository], object]] = {
            "list every backup": lambda r: r.list_backups(),
            "list one chain": lambda r: r.list_backups("host007-srv-vm-disk.img"),
            "newest of one chain": lambda r: r.latest("host007-srv-vm-disk.img"),
        }
        print(f"{args.chains} chains x {args.backups} backups, median of {args.rounds}")
        print(f"{'question':24} {'plain s':>9} {'private s':>10} {'ratio':>6}")
        for name, action in questions.items():
            a, b = timed(action, plain, args.rounds), timed(action, private, args.rounds)
            print(f"{name:24} {a:9.4f} {b:10.4f} {b / a:6.2f}")


if __name__ == "__main__":
    main()

"""Restoring the newest of a long chain against restoring the same image stored as one full, side by side.

One mixed image (a quarter random, a quarter zeros, half text-like) is backed up in full, then rewritten
``--incrementals`` times, each time about ``--change-pct`` % of it in scattered 64 KiB writes through the
engine, with an incremental after each. A copy of the final image is backed up in full into a second
repository. Then the newest backup of each repository is restored with the command line, alternately,
``--runs`` times each, from a cold page cache. Reported: the median seconds and CPU of each, the chunks
fetched, and the ratio chain / single (the goal: at most 1.15). Both restores are checked byte for byte.

Needs root (to drop the page cache).
Usage: python bench/restore_chain.py [--size-mib 1024] [--incrementals 30] [--change-pct 1] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.location import StoreOptions, open_store
from cbtbackup.repo.repository import Repository

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_vs_borg_restic import drop_caches
from s3_vs_local import make_image

MiB = 1 << 20
WRITE = 64 << 10


def new_repo(path: Path) -> Repository:
    location = str(path)
    return Repository.init(open_store(location, StoreOptions(), create=True), location, RepositoryConfig())


def rewrite_scattered(image: Path, rng: random.Random, size: int, writes: int) -> None:
    """One day's change: ``writes`` scattered 64 KiB blocks through the engine, text-like or random."""
    with TrackedVolume.open(image) as vol:
        for block in rng.sample(range(size // WRITE), writes):
            data = rng.randbytes(WRITE // 2).hex().encode() if block % 2 else rng.randbytes(WRITE)
            vol.write(block * WRITE, data)


def restore(repo: Path, target: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and chunks fetched of one restore from a cold cache."""
    target.unlink(missing_ok=True)
    drop_caches()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cbtbackup", "restore", "--json", "-r", str(repo), "latest",
                           str(target)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"restore failed: {proc.stderr.strip()}")
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    return wall, cpu, int(json.loads(proc.stdout)["chunks_fetched"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--incrementals", type=int, default=30)
    parser.add_argument("--change-pct", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        image = work / "image.img"
        make_image(image, args.size_mib)
        TrackedVolume.track(image).close()
        chain = new_repo(work / "chain")
        run_backup(chain, BackupOptions(str(image), "full"))
        rng = random.Random(1)
        writes = max(1, int(size * args.change_pct / 100) // WRITE)
        for _ in range(args.incrementals):
            rewrite_scattered(image, rng, size, writes)
            run_backup(chain, BackupOptions(str(image), "incr"))
        final = work / "final.img"
        shutil.copyfile(image, final)
        TrackedVolume.track(final).close()
        run_backup(new_repo(work / "single"), BackupOptions(str(final), "full"))
        expected = image.read_bytes()

        results: dict[str, list[tuple[float, float, int]]] = {"chain": [], "single": []}
        for _ in range(args.runs):
            for kind in ("single", "chain"):
                target = work / f"restored-{kind}.img"
                results[kind].append(restore(work / kind, target))
                if target.read_bytes() != expected:
                    raise SystemExit(f"the {kind} restore differs from the image")
                target.unlink()

    report: dict[str, Any] = {"size_mib": args.size_mib, "incrementals": args.incrementals,
                              "change_pct": args.change_pct}
    for kind, runs in results.items():
        report[kind] = {"seconds": round(statistics.median(r[0] for r in runs), 3),
                        "cpu_s": round(statistics.median(r[1] for r in runs), 3),
                        "chunks_fetched": runs[0][2]}
    report["chain_vs_single"] = round(report["chain"]["seconds"] / report["single"]["seconds"], 3)
    report["chain_vs_single_cpu"] = round(report["chain"]["cpu_s"] / report["single"]["cpu_s"], 3)
    if args.json:
        print(json.dumps(report))
        return
    for kind in ("single", "chain"):
        r = report[kind]
        print(f"{kind:>6}: {r['seconds']:6.2f} s, CPU {r['cpu_s']:6.2f} s, {r['chunks_fetched']} chunks fetched")
    print(f"chain of {args.incrementals + 1} / chain of 1: {report['chain_vs_single']:.3f}x wall, "
          f"{report['chain_vs_single_cpu']:.3f}x CPU (goal: at most 1.15x wall)")


if __name__ == "__main__":
    main()

"""Does a chain age? The newest backup of a long-kept chain restored against the same image stored as one
fresh full, with and without repacking in prune, side by side.

One mixed image is backed up in full, then rewritten ``--days`` times, each time about ``--change-pct`` %
of it in scattered 64 KiB writes through the engine, with an incremental after each into two repositories;
after each incremental both run ``forget --keep-last KEEP`` and ``prune`` — one with repacking (the
default), one with ``--no-repack`` (``--schedule end``: forget and prune once, after the last day). A copy
of the final image is backed up in full into a third repository. Then the newest backup of each is
restored with the command line, in turn, ``--runs`` times each, from a cold page cache. Reported: median
seconds and CPU, chunks fetched, the repository's size, and the ratios to the fresh full (the goal: the
repacked chain at most 1.15x). Every restore is checked byte for byte.

Needs root (to drop the page cache).
Usage: python bench/aged_chain.py [--size-mib 1024] [--days 90] [--keep 30] [--change-pct 1]
                                  [--schedule daily|end] [--runs 5] [--repack-over 1.2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume
from cbtbackup.model.retention import RetentionPolicy
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.forget import ForgetOptions, run_forget
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.pipeline.repack import REPACK_OVER
from cbtbackup.repo.repository import Repository

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restore_chain import WRITE, new_repo, restore, rewrite_scattered
from s3_vs_local import make_image

MiB = 1 << 20
KINDS = ("single", "repacked", "unrepacked")


def tidy(repo: Repository, keep: int, repack: bool, over: float) -> tuple[float, int]:
    """forget --keep-last, then prune; (seconds, bytes repacked)."""
    start = time.perf_counter()
    run_forget(repo, ForgetOptions(policy=RetentionPolicy(last=keep)))
    pruned = run_prune(repo, PruneOptions(repack=repack, repack_over=over))
    return time.perf_counter() - start, pruned.repack.bytes_rewritten


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--keep", type=int, default=30)
    parser.add_argument("--change-pct", type=float, default=1.0)
    parser.add_argument("--schedule", choices=("daily", "end"), default="daily")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repack-over", type=float, default=REPACK_OVER)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    tidy_s = {True: 0.0, False: 0.0}
    repacked_bytes = 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        image = work / "image.img"
        make_image(image, args.size_mib)
        TrackedVolume.track(image).close()
        chains = {True: new_repo(work / "repacked"), False: new_repo(work / "unrepacked")}
        for repo in chains.values():
            run_backup(repo, BackupOptions(str(image), "full"))
        rng = random.Random(1)
        writes = max(1, int(size * args.change_pct / 100) // WRITE)
        for day in range(args.days):
            rewrite_scattered(image, rng, size, writes)
            for repack, repo in chains.items():
                run_backup(repo, BackupOptions(str(image), "incr"))
                if args.schedule == "daily" or day == args.days - 1:
                    seconds, rewritten = tidy(repo, args.keep, repack, args.repack_over)
                    tidy_s[repack] += seconds
                    repacked_bytes += rewritten
        final = work / "final.img"
        shutil.copyfile(image, final)
        TrackedVolume.track(final).close()
        run_backup(new_repo(work / "single"), BackupOptions(str(final), "full"))
        expected = image.read_bytes()
        sizes = {kind: size_of(work / kind) for kind in KINDS}
        results: dict[str, list[tuple[float, float, int]]] = {kind: [] for kind in KINDS}
        for n in range(args.runs):
            for kind in KINDS[n % 3:] + KINDS[:n % 3]:  # each goes first in turn
                target = work / f"restored-{kind}.img"
                results[kind].append(restore(work / kind, target))
                if target.read_bytes() != expected:
                    raise SystemExit(f"the {kind} restore differs from the image")
                target.unlink()

    report: dict[str, Any] = {"size_mib": args.size_mib, "days": args.days, "keep": args.keep,
                              "change_pct": args.change_pct, "schedule": args.schedule,
                              "repack_over": args.repack_over,
                              "forget_prune_s": {"repacked": round(tidy_s[True], 2),
                                                 "unrepacked": round(tidy_s[False], 2)},
                              "repacked_mib": round(repacked_bytes / MiB, 1)}
    for kind, runs in results.items():
        report[kind] = {"seconds": round(statistics.median(r[0] for r in runs), 3),
                        "cpu_s": round(statistics.median(r[1] for r in runs), 3),
                        "chunks_fetched": runs[0][2], "repository_mib": round(sizes[kind] / MiB, 1)}
    for kind in ("repacked", "unrepacked"):
        report[f"{kind}_vs_single"] = round(report[kind]["seconds"] / report["single"]["seconds"], 3)
    if args.json:
        print(json.dumps(report))
        return
    for kind in KINDS:
        r = report[kind]
        print(f"{kind:>10}: {r['seconds']:6.2f} s, CPU {r['cpu_s']:6.2f} s, {r['chunks_fetched']} chunks fetched, "
              f"repository {r['repository_mib']} MiB")
    print(f"after {args.days} days of {args.change_pct} % kept to {args.keep} ({args.schedule} forget + prune): "
          f"repacked {report['repacked_vs_single']:.3f}x, not repacked {report['unrepacked_vs_single']:.3f}x "
          f"the fresh full's restore (goal: repacked at most 1.15x); repack rewrote {report['repacked_mib']} MiB, "
          f"forget + prune took {report['forget_prune_s']['repacked']} s vs {report['forget_prune_s']['unrepacked']} s")


if __name__ == "__main__":
    main()

"""Peak memory of a full, an incremental and a restore of a large sparse image, whatever its size.

A sparse image of ``--size-gib`` (default 64) with 1 GiB of mixed data spread over it in 64 MiB stretches
is tracked, backed up in full, 1 % of its data stretches rewritten through the engine, backed up
incrementally, and the incremental restored to a new file. Each step runs as its own ``cbtbackup``
process; its peak RSS comes from ``wait4``. The goal: at most 128 MiB for each.

Usage: python bench/peak_rss.py [--size-gib 64] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_vs_borg_restic import LAUNCHER

MiB, GiB = 1 << 20, 1 << 30
STRETCH = 64 * MiB
GOAL_MIB = 128


def peak(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of one command."""
    with tempfile.NamedTemporaryFile("r") as usage:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, usage.name, *cmd], capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[2:4])} failed: {proc.stderr.decode().strip()[-400:]}")
        rss, cpu = usage.read().split()
        return round(int(rss) / 1024, 1), round(float(cpu), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_gib * GiB
    rng = random.Random(5)
    report: dict[str, Any] = {"size_gib": args.size_gib}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        image = work / "sparse.img"
        stretches = sorted(rng.sample(range(size // STRETCH), GiB // STRETCH))
        with open(image, "wb") as f:
            f.truncate(size)
            for s in stretches:
                f.seek(s * STRETCH)
                for _ in range(STRETCH // MiB):
                    f.write(rng.randbytes(MiB) if rng.random() < 0.3 else rng.randbytes(MiB // 2).hex().encode())
        cb = [sys.executable, "-m", "cbtbackup"]
        subprocess.run([*cb, "track", str(image)], check=True, capture_output=True)
        repo = work / "repo"
        subprocess.run([*cb, "init", "-r", str(repo), "--encryption", "none"], check=True, capture_output=True)
        report["full"] = peak([*cb, "full", "-r", str(repo), str(image)])
        with TrackedVolume.open(image) as vol:
            for s in stretches:
                for _ in range(STRETCH // (64 << 10) // 100):
                    vol.write(s * STRETCH + rng.randrange(STRETCH // (64 << 10)) * (64 << 10), rng.randbytes(64 << 10))
        report["incr"] = peak([*cb, "incr", "-r", str(repo), str(image)])
        report["restore"] = peak([*cb, "restore", "-r", str(repo), "latest", str(work / "restored.img")])
        same = subprocess.run(["cmp", "-s", str(image), str(work / "restored.img")]).returncode == 0
        if not same:
            raise SystemExit("the restore differs from the image")
    if args.json:
        print(json.dumps(report))
        return
    for step in ("full", "incr", "restore"):
        rss, cpu = report[step]
        print(f"{step:>8}: peak RSS {rss:6.1f} MiB, CPU {cpu:6.2f} s ({'met' if rss <= GOAL_MIB else 'NOT met'}: "
              f"goal <= {GOAL_MIB} MiB) of a {args.size_gib} GiB sparse image")


if __name__ == "__main__":
    main()

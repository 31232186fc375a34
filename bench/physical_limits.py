"""How close a full backup and a restore come to the machine's limits: against ``zstd`` itself and borg,
side by side in one run, cold page cache each time, data on disk at the end of each step (``sync``).

One mixed image (a quarter random, a quarter zeros, half text-like), the same for every contender:

- full: ``zstd -T2 -LEVEL`` of the image into a file; cbtbackup ``full`` into a plaintext repository and
  into an encrypted one opened with a key file; ``borg create -e none -C zstd,LEVEL`` with fixed 1 MiB
  chunks. LEVEL is cbtbackup's default (``--level``, 2), the same for all three;
- restore: ``zstd -d`` of that file into an image file; cbtbackup ``restore`` of the plaintext full;
  ``borg extract``.

Each step is followed by ``sync`` inside its timing. The rounds put each contender first in turn;
ratios are taken within a round and their median reported, against the goals: full wall <= 1.10x zstd,
full CPU <= 0.75x borg, encrypted CPU <= 1.05x plaintext, restore wall <= 1.15x zstd -d and <= 0.5x borg.
``--load`` runs a second process that keeps one core busy throughout (the note's second table).

Needs root (to drop the page cache), zstd and the Debian package borgbackup.
Usage: python bench/physical_limits.py [--size-gib 1] [--rounds 3] [--level N] [--load] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_vs_borg_restic import DEFAULT_LEVEL, LAUNCHER, GiB, check_same, drop_caches, make_base

CB = [sys.executable, "-m", "cbtbackup"]
BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
GOALS = {"full_wall_vs_zstd": 1.10, "full_cpu_vs_borg": 0.75, "encrypted_cpu_vs_plain": 1.05,
         "restore_wall_vs_zstd_d": 1.15, "restore_wall_vs_borg": 0.5}


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds (with a sync after) and CPU seconds of one command from a cold page cache."""
    drop_caches()
    with tempfile.NamedTemporaryFile("r") as usage:
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, usage.name, *cmd],
                              env={**child_env, **(env or {})}, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.sync()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode().strip()[-400:]}")
        return wall, float(usage.read().split()[1])


def one_round(work: Path, image: Path, key: Path, n: int, level: int) -> dict[str, tuple[float, float]]:
    r = work / f"round{n}"
    r.mkdir()
    plain, enc, borg = r / "plain", r / "enc", r / "borg"
    os.environ["CBTBACKUP_CACHE_DIR"] = str(r / "cache")  # the encrypted copies share an id: no shared cache
    subprocess.run([*CB, "init", "-r", str(plain), "--encryption", "none", "--compression", f"zstd:{level}"],
                   check=True, capture_output=True)
    shutil.copytree(work / "enc-template", enc)  # an empty encrypted repository the key file opens
    borg_env = {**BORG_ENV, "BORG_BASE_DIR": str(r / "borg-home")}
    subprocess.run(["borg", "init", "-e", "none", str(borg)], check=True, capture_output=True,
                   env={**os.environ, **borg_env})
    steps = {
        "zstd": lambda: timed(["zstd", "-T2", f"-{level}", "-q", "-f", str(image), "-o", str(r / "image.zst")]),
        "full": lambda: timed([*CB, "full", "-r", str(plain), str(image)]),
        "full_encrypted": lambda: timed([*CB, "full", "-r", str(enc), "--key-file", str(key), str(image)]),
        "borg_create": lambda: timed(["borg", "create", "--chunker-params", "fixed,1048576", "-C", f"zstd,{level}",
                                      f"{borg}::full", image.name], borg_env, image.parent),
    }
    order = list(steps)
    order = order[n % len(order):] + order[:n % len(order)]
    out: dict[str, tuple[float, float]] = {name: steps[name]() for name in order}
    (r / "x").mkdir()
    restores = {
        "zstd_d": lambda: timed(["zstd", "-d", "-q", "-f", str(r / "image.zst"), "-o", str(r / "zstd.img")]),
        "restore": lambda: timed([*CB, "restore", "-r", str(plain), "latest", str(r / "cb.img")]),
        "borg_extract": lambda: timed(["borg", "extract", f"{borg}::full"], borg_env, r / "x"),
    }
    order = list(restores)
    order = order[n % len(order):] + order[:n % len(order)]
    for name in order:
        out[name] = restores[name]()
    for restored in (r / "zstd.img", r / "cb.img", r / "x" / image.name):
        check_same(restored, image)
    shutil.rmtree(r)
    return out


def busy() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level of every contender")
    parser.add_argument("--load", action="store_true", help="keep one core busy with a second process")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    loader = multiprocessing.Process(target=busy, daemon=True) if args.load else None
    rounds = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        image = work / "image.img"
        make_base(image, int(args.size_gib * GiB))
        subprocess.run([*CB, "track", str(image)], check=True, capture_output=True)
        template, key = work / "enc-template", work / "bench.key"
        env = {**os.environ, "CBTBACKUP_PASSWORD": "bench"}
        subprocess.run([*CB, "init", "-r", str(template), "--compression", f"zstd:{args.level}"], check=True,
                       capture_output=True, env=env)
        subprocess.run([*CB, "key", "export", "-r", str(template), str(key)], check=True, capture_output=True,
                       env=env)
        if loader is not None:
            loader.start()
        try:
            for n in range(args.rounds):
                rounds.append(one_round(work, image, key, n, args.level))
        finally:
            if loader is not None:
                loader.terminate()

    def ratio(a: str, b: str, i: int) -> float:
        return round(statistics.median(r[a][i] / r[b][i] for r in rounds), 3)

    report: dict[str, Any] = {
        "size_gib": args.size_gib, "level": args.level, "rounds": args.rounds, "load": args.load,
        "seconds": {k: round(statistics.median(r[k][0] for r in rounds), 2) for k in rounds[0]},
        "cpu_seconds": {k: round(statistics.median(r[k][1] for r in rounds), 2) for k in rounds[0]},
        "full_wall_vs_zstd": ratio("full", "zstd", 0),
        "full_cpu_vs_borg": ratio("full", "borg_create", 1),
        "full_wall_vs_borg": ratio("full", "borg_create", 0),
        "encrypted_cpu_vs_plain": ratio("full_encrypted", "full", 1),
        "restore_wall_vs_zstd_d": ratio("restore", "zstd_d", 0),
        "restore_wall_vs_borg": ratio("restore", "borg_extract", 0),
    }
    if args.json:
        print(json.dumps(report))
        return
    loaded = ", one core loaded" if args.load else ""
    print(f"{args.size_gib:g} GiB mixed image, zstd level {args.level}, {args.rounds} rounds{loaded}")
    for k in rounds[0]:
        print(f"  {k:>15}: {report['seconds'][k]:6.2f} s wall, {report['cpu_seconds'][k]:6.2f} s CPU")
    for k, goal in GOALS.items():
        print(f"  {k:>23}: {report[k]:.3f}x (goal <= {goal}x) {'met' if report[k] <= goal else 'NOT met'}")
    print(f"  {'full_wall_vs_borg':>23}: {report['full_wall_vs_borg']:.3f}x")


if __name__ == "__main__":
    main()

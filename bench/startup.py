"""How long ``cbtbackup --help`` takes, median of N runs, next to a bare ``python -c pass``.

Usage: python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    bare = median_seconds([sys.executable, "-c", "pass"], args.runs)
    help_ = median_seconds([sys.executable, "-m", "cbtbackup", "--help"], args.runs)
    print(f"python -c pass:   {bare * 1000:6.1f} ms")
    print(f"cbtbackup --help: {help_ * 1000:6.1f} ms (goal well under 200 ms)")


if __name__ == "__main__":
    main()

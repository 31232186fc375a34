"""Write throughput through the userspace engine against plain ``pwrite``, side by side in one run.

Three ways of writing the same 1 MiB buffers over the same image, interleaved over several rounds so the
machine's noise hits all of them alike; the ratios to plain ``pwrite`` are what to compare:

- plain:     ``os.pwrite`` on the image;
- tracking:  ``TrackedVolume.write`` (CBT marks, no snapshot);
- snapshot:  the same with a snapshot held, each chunk copied to the difference storage once.

Writes land in the page cache (no fsync): this measures the engine's own cost, not the disk's.
Usage: python bench/engine_write.py [--size-mib 512] [--rounds 5] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cbtbackup.engine import Snapshot, TrackedVolume

MiB = 1 << 20


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where the image goes (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    size = args.size_mib * MiB
    buffers = [os.urandom(MiB) for _ in range(8)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        image = Path(tmp) / "bench.img"
        with open(image, "wb") as f:
            for i in range(args.size_mib):
                f.write(buffers[i % 8])
        fd = os.open(image, os.O_RDWR)

        def plain() -> None:
            for i in range(args.size_mib):
                os.pwrite(fd, buffers[i % 8], i * MiB)

        times: dict[str, list[float]] = {"plain": [], "tracking": [], "snapshot": []}
        with TrackedVolume.track(image) as vol:

            def tracking() -> None:
                for i in range(args.size_mib):
                    vol.write(i * MiB, buffers[(i + 3) % 8])

            for _ in range(args.rounds):
                times["plain"].append(timed(plain))
                times["tracking"].append(timed(tracking))
                with Snapshot.create([vol], tmp) as snap:
                    snap.take()
                    times["snapshot"].append(timed(tracking))
                    assert snap.copied_chunks(vol) == size // (256 << 10)
        os.close(fd)

    best = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: round(args.size_mib / t, 1) for k, t in best.items()}
    tracking_ratio = best["plain"] / best["tracking"]
    snapshot_ratio = best["plain"] / best["snapshot"]
    if args.json:
        ratios = {"tracking_vs_plain": round(tracking_ratio, 3), "snapshot_vs_plain": round(snapshot_ratio, 3)}
        print(json.dumps({"size_mib": args.size_mib, "rounds": args.rounds, "mib_per_s": rates, **ratios}))
    else:
        for k, v in rates.items():
            print(f"{k:>9}: {v:8.1f} MiB/s")
        print(f"tracking / plain: {tracking_ratio:.0%} (goal >= 70%)")
        print(f"snapshot / plain: {snapshot_ratio:.0%} (goal >= 35%)")


if __name__ == "__main__":
    main()

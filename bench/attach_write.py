"""Writes through an attached volume's loop device against a plain loop device on the same file system.

Side by side in one run, interleaved over rounds: sequential 1 MiB writes with O_DIRECT (``dd
oflag=direct``) and random 4 KiB O_DIRECT writes, to
- plain:     a loop device on an ordinary image file;
- tracking:  the loop device of ``cbtbackup attach --loop`` (FUSE + engine, no snapshot);
- snapshot:  the same while a snapshot is held (each chunk copied once per round).

Needs root, FUSE and loop devices. Usage: python bench/attach_write.py [--size-mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cbtbackup.engine.attach.control import ControlClient

MiB = 1 << 20


def dd_seconds(source: Path, device: str, size_mib: int) -> float:
    os.sync()  # every run starts with no dirty pages, so none pays for another's writeback
    start = time.perf_counter()
    subprocess.run(["dd", f"if={source}", f"of={device}", "bs=1M", f"count={size_mib}", "oflag=direct",
                    "status=none"], check=True)
    return time.perf_counter() - start


def random_4k_seconds(device: str, size: int, count: int, seed: int) -> float:
    rng = random.Random(seed)
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(4096))
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        os.sync()
        start = time.perf_counter()
        for _ in range(count):
            os.pwritev(fd, [buf], rng.randrange(size // 4096) * 4096)
        os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random-writes", type=int, default=4000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    cb = [sys.executable, "-m", "cbtbackup"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "random.bin"
        source.write_bytes(os.urandom(size))
        plain_img, tracked_img, mnt = work / "plain.img", work / "tracked.img", work / "mnt"
        for img in (plain_img, tracked_img):
            with open(img, "wb") as f:
                f.write(os.urandom(size))  # real data, so COW copies real chunks
        mnt.mkdir()
        subprocess.run([*cb, "track", str(tracked_img)], check=True, capture_output=True)
        attach = subprocess.run([*cb, "attach", str(tracked_img), str(mnt), "--loop", "--json"], check=True,
                                capture_output=True, text=True)
        tracked_loop = json.loads(attach.stdout.strip().splitlines()[-1])["loop"]
        plain_loop = subprocess.run(["losetup", "--find", "--show", str(plain_img)], check=True,
                                    capture_output=True, text=True).stdout.strip()
        seq: dict[str, list[float]] = {"plain": [], "tracking": [], "snapshot": []}
        rnd: dict[str, list[float]] = {"plain": [], "tracking": [], "snapshot": []}
        try:
            for r in range(args.rounds):
                seq["plain"].append(dd_seconds(source, plain_loop, args.size_mib))
                seq["tracking"].append(dd_seconds(source, tracked_loop, args.size_mib))
                rnd["plain"].append(random_4k_seconds(plain_loop, size, args.random_writes, r))
                rnd["tracking"].append(random_4k_seconds(tracked_loop, size, args.random_writes, r))
                client = ControlClient(work / "tracked.img.cbt")
                try:
                    name = client.call("snapshot")["name"]
                    seq["snapshot"].append(dd_seconds(source, tracked_loop, args.size_mib))
                    client.call("release", name=name)
                    name = client.call("snapshot")["name"]
                    rnd["snapshot"].append(random_4k_seconds(tracked_loop, size, args.random_writes, r))
                    client.call("release", name=name)
                finally:
                    client.close()
        finally:
            subprocess.run(["losetup", "-d", plain_loop], check=False)
            subprocess.run([*cb, "detach", str(mnt)], check=False, capture_output=True)
    seq_s = {k: statistics.median(v) for k, v in seq.items()}
    rnd_s = {k: statistics.median(v) for k, v in rnd.items()}
    report = {
        "sequential_mib_per_s": {k: round(args.size_mib / t, 1) for k, t in seq_s.items()},
        "random_4k_iops": {k: round(args.random_writes / t) for k, t in rnd_s.items()},
        "sequential_ratio": {k: round(seq_s["plain"] / seq_s[k], 3) for k in ("tracking", "snapshot")},
        "random_ratio": {k: round(rnd_s["plain"] / rnd_s[k], 3) for k in ("tracking", "snapshot")},
    }
    if args.json:
        print(json.dumps(report))
        return
    for k in seq_s:
        print(f"{k:>9}: sequential {report['sequential_mib_per_s'][k]:8.1f} MiB/s, "
              f"random 4K {report['random_4k_iops'][k]:7d} IOPS")
    print(f"sequential vs plain loop: tracking {report['sequential_ratio']['tracking']:.0%} (goal >= 40%), "
          f"snapshot {report['sequential_ratio']['snapshot']:.0%} (goal >= 25%)")
    print(f"random 4K vs plain loop:  tracking {report['random_ratio']['tracking']:.0%}, "
          f"snapshot {report['random_ratio']['snapshot']:.0%}")


if __name__ == "__main__":
    main()

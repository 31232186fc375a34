"""A qcow2 image through the QEMU provider (qemu-storage-daemon, NBD, dirty bitmaps) against the same data
as a raw image tracked by the userspace engine, side by side in one run: a full, then 1 % of the disk
rewritten in 64 KiB blocks (qemu-io on the qcow2, the engine on the raw image), then an incremental of each.
Plaintext repositories, zstd 3; reported as times and the qcow2/raw ratios.

Usage: python bench/qemu_vs_raw.py [--size-mib 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_vs_local import make_image

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.repo.location import open_repository
from cbtbackup.repo.repository import Repository

MiB = 1 << 20
BLOCK = 64 << 10


def init(path: Path) -> Repository:
    subprocess.run([sys.executable, "-m", "cbtbackup", "init", "-r", str(path), "--encryption", "none"], check=True,
                   capture_output=True)
    return open_repository(str(path))


def timed(repo: Repository, source: Path, kind: Literal["full", "incr"], provider: str) -> dict[str, Any]:
    start = time.perf_counter()
    result = run_backup(repo, BackupOptions(str(source), kind, provider=provider))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "method": result.manifest.method,
            "read_mib": round(result.manifest.stats.bytes_scanned / MiB, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        raw, qcow2 = work / "disk.raw", work / "disk.qcow2"
        make_image(raw, args.size_mib)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
        TrackedVolume.track(raw).close()
        raw_repo, qcow2_repo = init(work / "raw-repo"), init(work / "qcow2-repo")
        out: dict[str, Any] = {"size_mib": args.size_mib}
        out["raw_full"] = timed(raw_repo, raw, "full", "userspace")
        out["qcow2_full"] = timed(qcow2_repo, qcow2, "full", "qemu")
        rng = random.Random(1)
        blocks = rng.sample(range(size // BLOCK), size // 100 // BLOCK)
        with TrackedVolume.open(raw) as volume:
            for block in blocks:
                volume.write(block * BLOCK, rng.randbytes(BLOCK))
        commands = [arg for block in blocks for arg in ("-c", f"write -P {block % 251} {block * BLOCK} {BLOCK}")]
        subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(qcow2)], check=True, capture_output=True)
        out["raw_incr"] = timed(raw_repo, raw, "incr", "userspace")
        out["qcow2_incr"] = timed(qcow2_repo, qcow2, "incr", "qemu")
    out["full_qcow2_vs_raw"] = round(out["qcow2_full"]["seconds"] / out["raw_full"]["seconds"], 2)
    out["incr_qcow2_vs_raw"] = round(out["qcow2_incr"]["seconds"] / out["raw_incr"]["seconds"], 2)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:20} {value}")


if __name__ == "__main__":
    main()

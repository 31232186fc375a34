"""Backups through the real blksnap module, against ``dd`` of the same device, side by side in one VM run.

Inside the test VM (Veeam's standalone module loaded, software emulation where KVM cannot boot the kernel)
on a loop device of a mixed image (a quarter random, a quarter zeros, half text-like): ``dd`` of the device,
``dd`` of a snapshot image of it, a full backup of the device read directly (``--provider scan``, into a
repository of its own: the same pipeline without the module), a full backup through the module, 1 % of the
device rewritten in 64 KiB blocks, a CBT incremental. Caches are dropped before each step. The VM slows
everything, ``dd`` included, so only the ratios mean anything. In one Python process (each interpreter start
costs 15-25 s there):

    VM_DISK_GB=8 VM_RWDIR=/tmp/bench-out bash tests/kernel/run-in-vm.sh \\
        "cd $PWD && python3 bench/blksnap_vm.py --size-mib 2048 --json-out \\$OUT/blksnap_vm.json"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_vs_local import make_image

from cbtbackup.cli import main as cbtbackup
from cbtbackup.engine.providers import BlksnapProvider

MiB = 1 << 20


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dd(path: str) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=4M", "status=none"], check=True)
    return time.perf_counter() - start


def timed_cli(*args: str) -> float:
    drop_caches()
    start = time.perf_counter()
    code = cbtbackup(list(args))
    assert code == 0, f"cbtbackup {' '.join(args)} exited {code}"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    work = Path(os.environ.get("SCRATCH", "/tmp")) / "bench"
    work.mkdir(parents=True, exist_ok=True)
    image, storage, repo = work / "disk.img", work / "diff", work / "repo"
    storage.mkdir(exist_ok=True)
    make_image(image, args.size_mib)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    limit = ("--diff-storage", str(storage), "--diff-storage-limit", "256MiB")
    out: dict[str, Any] = {"size_mib": args.size_mib}
    try:
        out["dd_device_s"] = dd(device)
        group = BlksnapProvider([device], str(storage), 256 * MiB).open_group()
        try:
            out["dd_snapshot_image_s"] = dd(str(group.sessions[0].image_path))
        finally:
            group.close()
        assert cbtbackup(["init", "-r", str(repo), "--encryption", "none"]) == 0
        assert cbtbackup(["init", "-r", str(work / "scan-repo"), "--encryption", "none"]) == 0
        out["full_scan_s"] = timed_cli("full", "-r", str(work / "scan-repo"), device, "--provider", "scan")
        out["full_s"] = timed_cli("full", "-r", str(repo), device, "--provider", "blksnap", *limit)
        rng = random.Random(1)
        fd = os.open(device, os.O_WRONLY)
        try:
            block = 64 << 10
            for index in rng.sample(range(args.size_mib * MiB // block), args.size_mib * MiB // 100 // block):
                os.pwrite(fd, rng.randbytes(block), index * block)
            os.fsync(fd)
        finally:
            os.close(fd)
        out["incr_s"] = timed_cli("incr", "-r", str(repo), device, "--provider", "blksnap", *limit)
        out["dd_device_after_s"] = dd(device)
    finally:
        cbtbackup(["blksnap", "detach", device])
        subprocess.run(["losetup", "-d", device], check=False)
    dd_device = (out["dd_device_s"] + out["dd_device_after_s"]) / 2
    out["full_vs_dd_device"] = round(out["full_s"] / dd_device, 2)
    out["full_vs_dd_snapshot_image"] = round(out["full_s"] / out["dd_snapshot_image_s"], 2)
    out["full_vs_full_scan_of_the_device"] = round(out["full_s"] / out["full_scan_s"], 2)
    out["incr_vs_dd_device"] = round(out["incr_s"] / dd_device, 3)
    for key, value in out.items():
        if key.endswith("_s"):
            out[key] = round(value, 2)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")


if __name__ == "__main__":
    main()

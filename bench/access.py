"""Getting data back, side by side in one run on one backup of a mixed image (encrypted, the default):
``restore`` to a file; a sequential read of the image through ``mount``; ``qemu-img convert`` from
``serve``; and random 4 KiB reads through ``mount``, cold (a fresh mount) and warm (the same reads again),
with p50/p99 latency. Reported with the ratios to restore and the mount process's peak RSS.

Usage: python bench/access.py [--size-mib 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_vs_local import make_image

MiB = 1 << 20
ENV = {**os.environ, "CBTBACKUP_PASSWORD": "bench passphrase"}


def cbt(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "cbtbackup", *args, "--json"], capture_output=True, text=True,
                          env=ENV, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def start(*args: str, ready: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "cbtbackup", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (os.path.ismount(ready) if ready.is_dir() else ready.exists()):
        time.sleep(0.05)
    return proc


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def random_reads(path: Path, offsets: list[int]) -> list[float]:
    fd = os.open(path, os.O_RDONLY)
    try:
        times = []
        for off in offsets:
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            times.append((time.perf_counter() - t) * 1000)
        return times
    finally:
        os.close(fd)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"size_mib": args.size_mib}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        image, repo, mnt, sock = work / "mixed.img", work / "repo", work / "mnt", work / "nbd.sock"
        make_image(image, args.size_mib)
        cbt("init", "-r", str(repo))
        backup = cbt("full", "-r", str(repo), str(image), "--provider", "scan")
        mnt.mkdir()
        size = args.size_mib * MiB

        drop_caches()
        t = time.perf_counter()
        cbt("restore", "-r", str(repo), backup["id"], str(work / "restored.img"))
        report["restore_s"] = round(time.perf_counter() - t, 2)
        (work / "restored.img").unlink()

        proc = start("mount", "-r", str(repo), str(mnt), ready=mnt)
        leaf = mnt / backup["name"] / f"{backup['id']}.img"
        drop_caches()
        t = time.perf_counter()
        subprocess.run(["dd", f"if={leaf}", "of=/dev/null", "bs=1M", "status=none"], check=True)
        report["mount_sequential_s"] = round(time.perf_counter() - t, 2)
        report["mount_peak_rss_mib"] = peak_rss_mib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait()

        proc = start("serve", "-r", str(repo), backup["id"], "--listen", f"unix:{sock}", ready=sock)
        drop_caches()
        t = time.perf_counter()
        converted = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", f"nbd+unix:///?socket={sock}",
                                    str(work / "converted.img")], capture_output=True, text=True)
        if converted.returncode:
            raise SystemExit(f"qemu-img convert failed: {converted.stderr.strip()}")
        report["serve_qemu_img_convert_s"] = round(time.perf_counter() - t, 2)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        (work / "converted.img").unlink()

        rng = random.Random(7)
        offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(2000)]
        proc = start("mount", "-r", str(repo), str(mnt), ready=mnt)
        drop_caches()
        cold = random_reads(leaf, offsets)
        warm = random_reads(leaf, offsets)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        report["random_4k_ms"] = {"cold_p50": pct(cold, 0.5), "cold_p99": pct(cold, 0.99),
                                  "warm_p50": pct(warm, 0.5), "warm_p99": pct(warm, 0.99)}
    for key in ("mount_sequential_s", "serve_qemu_img_convert_s"):
        report[key.removesuffix("_s") + "_vs_restore"] = round(report["restore_s"] / report[key], 3)
    if args.json:
        print(json.dumps(report))
        return
    mib = args.size_mib
    print(f"restore:            {report['restore_s']:6.2f} s ({mib / report['restore_s']:6.1f} MiB/s)")
    print(f"mount, sequential:  {report['mount_sequential_s']:6.2f} s "
          f"({mib / report['mount_sequential_s']:6.1f} MiB/s) = {report['mount_sequential_vs_restore']:.0%} of "
          f"restore; mount peak RSS {report['mount_peak_rss_mib']} MiB")
    print(f"serve + qemu-img:   {report['serve_qemu_img_convert_s']:6.2f} s "
          f"({mib / report['serve_qemu_img_convert_s']:6.1f} MiB/s) = "
          f"{report['serve_qemu_img_convert_vs_restore']:.0%} of restore")
    print(f"random 4 KiB reads through mount: {report['random_4k_ms']} (ms)")


if __name__ == "__main__":
    main()

"""cbtbackup against borg and restic on the same image, side by side in one run, cold page cache each time.

For each tool, on its own copy of one base image of mixed content (a quarter random, a quarter zeros, half
text-like): a full backup, then about 1 % of the image rewritten in scattered 64 KiB writes (through the
engine for cbtbackup, plain writes for the others — the same bytes at the same places), an incremental
backup, and a restore of the incremental. Reported: seconds, throughput, CPU seconds (user + system), peak
RSS of each run, and the ratios the goals are stated in. cbtbackup's repository is unencrypted, as borg's
(``-e none``), and both compress with zstd at cbtbackup's default level (2). Children run with bytecode
caching on, as an installed copy does.

Needs root (to drop the page cache) and the Debian packages borgbackup and restic.
The host's load changes from minute to minute, so the whole sequence runs ``--rounds`` times with each tool
first in turn; ratios are taken within a round (the two tools back to back) and their median reported.

Usage: python bench/backup_vs_borg_restic.py [--size-gib 2] [--rounds 3] [--dir DIR] [--tools cbtbackup,borg,restic]
       [--json]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume
from cbtbackup.repo.chunk_codec import DEFAULT_COMPRESSION, parse_compression

MiB = 1 << 20
GiB = 1 << 30
WRITE = 64 << 10


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# The child's peak RSS must be measured from a small process: at exec the kernel folds the forking
# process's own high-water mark into the child's, and this script holds the writes in memory.
DEFAULT_LEVEL = parse_compression(DEFAULT_COMPRESSION) or 3

LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


Step = tuple[float, int, float]  # wall seconds, peak RSS in KiB, CPU seconds (user + system)


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Step:
    """Seconds, peak RSS (KiB) and CPU seconds of one command, from a cold page cache."""
    drop_caches()
    with tempfile.NamedTemporaryFile("r") as rss_file:
        start = time.perf_counter()
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, rss_file.name, *cmd],
                              env={**child_env, **(env or {})}, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode().strip()[-500:]}")
        rss, cpu = rss_file.read().split()
        return elapsed, int(rss), float(cpu)


def make_base(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for i in range(size // MiB):
            kind = i % 4
            if kind == 0:
                f.write(os.urandom(MiB))
            elif kind == 1:
                f.write(bytes(MiB))
            else:  # text-like: hex digits, about 2:1 compressible, unique per MiB
                f.write(os.urandom(MiB // 2).hex().encode())


def plan_writes(size: int, seed: int = 1) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    count = size // 100 // WRITE
    offsets = rng.sample(range(size // WRITE), count)
    return [(o * WRITE, rng.randbytes(WRITE)) for o in sorted(offsets)]


def cbtbackup_steps(work: Path, image: Path, writes: list[tuple[int, bytes]]) -> dict[str, Step]:
    repo, out = work / "repo", work / "restored.img"
    cb = [sys.executable, "-m", "cbtbackup"]
    subprocess.run([*cb, "init", "-r", str(repo), "--encryption", "none"], check=True, capture_output=True)
    subprocess.run([*cb, "track", str(image)], check=True, capture_output=True)
    results = {"full": run([*cb, "full", "-r", str(repo), str(image)])}
    with TrackedVolume.open(image) as vol:
        for offset, data in writes:
            vol.write(offset, data)
    results["incr"] = run([*cb, "incr", "-r", str(repo), str(image)])
    results["restore"] = run([*cb, "restore", "-r", str(repo), "latest", str(out)])
    check_same(out, image)
    return results


def borg_steps(work: Path, image: Path, writes: list[tuple[int, bytes]]) -> dict[str, Step]:
    repo, out = work / "borg-repo", work / "extract"
    env = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
           "BORG_BASE_DIR": str(work / "borg-home")}
    subprocess.run(["borg", "init", "-e", "none", str(repo)], check=True, capture_output=True,
                   env={**os.environ, **env})
    create = ["borg", "create", "--chunker-params", "fixed,1048576", "-C", f"zstd,{DEFAULT_LEVEL}"]
    results = {"full": run([*create, f"{repo}::full", image.name], env, cwd=image.parent)}
    apply_plain(image, writes)
    results["incr"] = run([*create, f"{repo}::incr", image.name], env, cwd=image.parent)
    out.mkdir()
    results["restore"] = run(["borg", "extract", f"{repo}::incr"], env, cwd=out)
    check_same(out / image.name, image)
    return results


def restic_steps(work: Path, image: Path, writes: list[tuple[int, bytes]]) -> dict[str, Step]:
    repo, out = work / "restic-repo", work / "restic-out"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(work / "restic-cache")}
    subprocess.run(["restic", "init", "--repo", str(repo)], check=True, capture_output=True,
                   env={**os.environ, **env})
    backup = ["restic", "--repo", str(repo), "backup", "--compression", "auto", image.name]
    results = {"full": run(backup, env, cwd=image.parent)}
    apply_plain(image, writes)
    results["incr"] = run(backup, env, cwd=image.parent)
    results["restore"] = run(["restic", "--repo", str(repo), "restore", "latest", "--target", str(out)], env)
    check_same(next(out.rglob(image.name)), image)
    return results


def apply_plain(image: Path, writes: list[tuple[int, bytes]]) -> None:
    fd = os.open(image, os.O_WRONLY)
    try:
        for offset, data in writes:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def check_same(a: Path, b: Path) -> None:
    if subprocess.run(["cmp", "-s", str(a), str(b)]).returncode != 0:
        raise SystemExit(f"restore of {b.name} differs: {a}")


TOOLS: dict[str, Callable[[Path, Path, list[tuple[int, bytes]]], dict[str, Step]]] = {
    "cbtbackup": cbtbackup_steps,
    "borg": borg_steps,
    "restic": restic_steps,
}


def median_step(rounds: list[dict[str, Step]], step: str) -> dict[str, float]:
    t, rss, cpu = (statistics.median(r[step][i] for r in rounds) for i in range(3))
    return {"seconds": round(t, 3), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(rss / 1024, 1)}


def ratios(cb: dict[str, Step], borg: dict[str, Step]) -> dict[str, float]:
    """The goals' ratios within one round (cbtbackup and borg run back to back)."""
    return {
        "full_cpu": cb["full"][2] / borg["full"][2],
        "full_wall": cb["full"][0] / borg["full"][0],
        "restore_wall": cb["restore"][0] / borg["restore"][0],
        "incr_time": cb["incr"][0] / borg["incr"][0],
        "full_throughput": borg["full"][0] / cb["full"][0],
        "restore_throughput": borg["restore"][0] / cb["restore"][0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--tools", default="cbtbackup,borg,restic")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = int(args.size_gib * GiB) // MiB * MiB
    tools = [t for t in args.tools.split(",") if t]
    runs: dict[str, list[dict[str, Step]]] = {t: [] for t in tools}
    round_ratios: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp) / "base.img"
        make_base(base, size)
        writes = plan_writes(size)
        for n in range(args.rounds):
            order = tools[n % len(tools):] + tools[:n % len(tools)]  # each tool goes first in turn
            this_round = {}
            for tool in order:
                work = Path(tmp) / tool
                work.mkdir()
                image = work / "disk.img"
                shutil.copyfile(base, image)
                this_round[tool] = TOOLS[tool](work, image, writes)
                runs[tool].append(this_round[tool])
                shutil.rmtree(work)
            if "cbtbackup" in this_round and "borg" in this_round:
                round_ratios.append(ratios(this_round["cbtbackup"], this_round["borg"]))
    report: dict[str, Any] = {"size_bytes": size, "rounds": args.rounds, "results": {}}
    for tool, rounds in runs.items():
        report["results"][tool] = {}
        for step in rounds[0]:
            r = median_step(rounds, step)
            r["mib_per_s"] = round(size / MiB / r["seconds"], 1)
            report["results"][tool][step] = r
    if round_ratios:
        report["ratios_vs_borg"] = {k: round(statistics.median(r[k] for r in round_ratios), 3)
                                    for k in round_ratios[0]}
        report["ratios_vs_borg_each_round"] = [{k: round(v, 3) for k, v in r.items()} for r in round_ratios]
    if args.json:
        print(json.dumps(report))
        return
    print(f"image: {size / GiB:.1f} GiB, {len(writes)} scattered 64 KiB writes between full and incr; "
          f"medians of {args.rounds} rounds, the tools in turn")
    for tool, steps_ in report["results"].items():
        for step, r in steps_.items():
            print(f"{tool:>9} {step:>7}: {r['seconds']:8.2f} s {r['mib_per_s']:8.1f} MiB/s  "
                  f"CPU {r['cpu_seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:6.1f} MiB")
    if "ratios_vs_borg" in report:
        r = report["ratios_vs_borg"]
        each = report["ratios_vs_borg_each_round"]

        def rounds_of(key: str) -> str:
            return ", ".join(f"{x[key]:.2f}" for x in each)

        print("ratios within each round (cbtbackup and borg back to back), median and each round:")
        print(f"full CPU vs borg:           {r['full_cpu']:.2f}x ({rounds_of('full_cpu')}) (goal <= 1.0x)")
        print(f"full wall vs borg:          {r['full_wall']:.2f}x ({rounds_of('full_wall')}) (goal <= 0.55x)")
        print(f"restore wall vs borg:       {r['restore_wall']:.2f}x ({rounds_of('restore_wall')}) (goal <= 0.5x)")
        print(f"incr time vs borg:          {r['incr_time']:.1%} (goal <= 15% at 2 GiB, <= 10% at 8 GiB)")
        print(f"full throughput vs borg:    {r['full_throughput']:.2f}x (goal >= 1.5x)")
        print(f"restore throughput vs borg: {r['restore_throughput']:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()

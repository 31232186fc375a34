"""The fixed cost of a backup: an incremental with nothing changed, on a local repository, through the CLI.

One tracked image, backed up in full into an unencrypted and an encrypted repository; then, alternately,
``--runs`` no-change incrementals into each, on a quiet file system and right after another program left
``--dirty-mib`` of written but unsynced data on it (which a commit that flushes the whole file system
would wait for). Reported: median wall seconds of each, next to ``python -c pass`` and ``cbtbackup --help``.
The goal: at most 0.25 s. An encrypted repository opened with its passphrase adds the key slot's Argon2id
(64 MiB, 3 passes), which is the passphrase's protection and not a cost to cut; opened with a key file
(``key export``, for unattended runs) it does not.

Usage: python bench/fixed_costs.py [--runs 7] [--size-mib 1024] [--dirty-mib 1024] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
PASSWORD = "bench-passphrase"


def cli(*args: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cbtbackup", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cbtbackup {' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed


def leave_dirty(path: Path, size_mib: int) -> None:
    """Write ``size_mib`` into a file and do not sync it: another program's writes, not yet on disk."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dirty-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="where to work (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        env["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        image = work / "disk.img"
        with open(image, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        cli("track", str(image), env=env)
        repos = {"plain": ["--encryption", "none"], "encrypted": [], "key file": []}
        enc_env = {**env, "CBTBACKUP_PASSWORD": PASSWORD}
        for kind, init_args in repos.items():
            cli("init", "-r", str(work / kind), *init_args, env=enc_env)
            cli("full", "-r", str(work / kind), str(image), env=enc_env)
        # An encrypted repository like the other, opened with a key file instead of the passphrase.
        cli("key", "export", "-r", str(work / "key file"), str(work / "repo.key"), env=enc_env)
        envs = {"plain": enc_env, "encrypted": enc_env,
                "key file": {**env, "CBTBACKUP_KEY_FILE": str(work / "repo.key")}}
        for _ in range(args.runs):
            times.setdefault("python -c pass", []).append(
                _timed([sys.executable, "-c", "pass"], env))
            times.setdefault("cbtbackup --help", []).append(cli("--help", env=env))
            for kind in repos:
                os.sync()
                times.setdefault(f"incr {kind}, quiet", []).append(
                    cli("incr", "-r", str(work / kind), str(image), env=envs[kind]))
                leave_dirty(work / "other.bin", args.dirty_mib)
                times.setdefault(f"incr {kind}, {args.dirty_mib} MiB dirty", []).append(
                    cli("incr", "-r", str(work / kind), str(image), env=envs[kind]))
                (work / "other.bin").unlink()
    report: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    if args.json:
        print(json.dumps(report))
        return
    for k, v in report.items():
        print(f"{k:>32}: {v:6.3f} s")
    print("goal: a no-change incremental at most 0.25 s (plain, and encrypted opened with a key file)")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

"""The main job on the embedded defaults: a tracked image backed up to a local repository and restored.

Run: python examples/local_backup_story.py [--keep DIR]
It makes a 256 MiB image of mixed content, starts tracking it with the userspace engine, writes through
the engine, runs `cbtbackup full`, then three rounds of scattered writes and `cbtbackup incr`, restores
every backup and checks each byte against a copy saved at that point. Each step prints the command it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cbtbackup.engine import TrackedVolume

MiB = 1 << 20


PASSWORD_FILE: list[str] = []  # the repository is encrypted: its passphrase is read from this file


def cbtbackup(*args: str) -> dict[str, object]:
    if "-r" in args:
        args = (*args, "--password-file", *PASSWORD_FILE)
    cmd = [sys.executable, "-m", "cbtbackup", *args, "--json"]
    print("$ cbtbackup " + " ".join(shlex.quote(a) for a in args))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"cbtbackup {args[0]} failed with exit code {done.returncode}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def make_image(path: Path, size: int, rng: random.Random) -> None:
    """A quarter random, a quarter zeros, half text-like."""
    words = [rng.randbytes(rng.randrange(3, 9)).hex().encode() for _ in range(500)]
    with open(path, "wb") as f:
        for i in range(size // MiB):
            kind = i % 4
            if kind == 0:
                f.write(rng.randbytes(MiB))
            elif kind == 1:
                f.write(bytes(MiB))
            else:
                f.write(b" ".join(rng.choice(words) for _ in range(MiB // 6))[:MiB].ljust(MiB, b"."))


def scribble(image: Path, rng: random.Random) -> int:
    """Scattered writes through the engine; returns how many."""
    count = rng.randrange(20, 60)
    with TrackedVolume.open(image) as vol:
        for _ in range(count):
            offset = rng.randrange(0, vol.size - 64 * 1024)
            vol.write(offset, rng.randbytes(rng.choice([512, 4096, 65536])))
    return count


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    args = parser.parse_args()
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        image, repo = work / "disk.img", work / "repo"
        make_image(image, 256 * MiB, rng)
        secret = work / "passphrase"
        secret.write_text("an example passphrase, kept in a file only root can read\n")
        secret.chmod(0o600)
        PASSWORD_FILE.append(str(secret))
        cbtbackup("init", "-r", str(repo))
        cbtbackup("track", str(image))
        scribble(image, rng)

        points = []
        result = cbtbackup("full", "-r", str(repo), str(image))
        points.append((str(result["id"]), sha256(image)))
        print(f"  full {result['id']}: {result['bytes_stored']} bytes stored")
        for _ in range(3):
            writes = scribble(image, rng)
            result = cbtbackup("incr", "-r", str(repo), str(image))
            points.append((str(result["id"]), sha256(image)))
            print(f"  {writes} writes -> incr {result['id']} by {result['method']}: "
                  f"{result['bytes_changed']} bytes changed, {result['bytes_stored']} stored")

        for backup_id, expected in points:
            target = work / f"restore-{backup_id}.img"
            cbtbackup("restore", "-r", str(repo), backup_id, str(target))
            status = "OK" if sha256(target) == expected else "MISMATCH"
            print(f"  {backup_id}: {status}")
            if status != "OK":
                sys.exit(1)
            os.remove(target)
        cbtbackup("verify", "-r", str(repo))
        print(f"all {len(points)} restores match the image as it was at each backup")


if __name__ == "__main__":
    main()

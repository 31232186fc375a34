"""Writers racing on one bucket: four `cbtbackup` processes, each backing up its own chain, and a fifth
running `forget --keep-last 3 --prune` at the same time, round after round. Afterwards the repository must
have no fork (two backups of one chain with the same parent), verify must find every chunk, and every
backup left must restore to exactly the image it was taken from.

The images are changed with plain writes between rounds (around any tracker), and backed up with the scan
provider, which compares every block with the previous backup. Used by tests/s3/test_s3_concurrency.py
(two rounds, on moto and RGW) and bench/s3_concurrency.py (ten rounds on RGW, timed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

CHAINS = 4
KEEP = 3


@dataclasses.dataclass
class StoryResult:
    rounds: int
    backups_made: int
    backups_kept: int
    forks: int
    verify_ok: bool
    restored_exact: int
    restore_mismatches: list[str]
    failures: list[str]  # a process's exit and last line, for any that failed
    seconds_per_round: list[float]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cbt(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cbtbackup", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], what: str, failures: list[str]) -> dict[str, Any] | None:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        failures.append(f"{what}: exit {proc.returncode}: {err.strip().splitlines()[-1:] or ['(nothing)']}")
        return None
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    parsed: dict[str, Any] = json.loads(last)
    return parsed


def scribble(image: Path, rng: random.Random) -> None:
    size = image.stat().st_size
    with open(image, "r+b") as f:
        for _ in range(8):
            f.seek(rng.randrange(size - 65536))
            f.write(rng.randbytes(rng.choice([512, 4096, 65536])))


def run_story(repo: str, endpoint: str, work: Path, rounds: int, image_size: int = 4 << 20,
              seed: int = 0) -> StoryResult:
    import time

    env = {**os.environ, "CBTBACKUP_S3_ENDPOINT": endpoint}
    failures: list[str] = []
    init = cbt("init", "-r", repo, "--encryption", "none", "--chunk-size", "256KiB", "--json", env=env)
    if finish(init, "init", failures) is None:
        raise RuntimeError(failures[0])
    rng = random.Random(seed)
    images = []
    for i in range(CHAINS):
        image = work / f"host{i}.img"
        image.write_bytes(rng.randbytes(image_size))
        images.append(image)
    expected: dict[str, Path] = {}  # backup id -> a copy of the image it was taken from
    made = 0
    seconds: list[float] = []
    for r in range(rounds):
        for image in images:
            if r:
                scribble(image, rng)
        copies = []
        for i, image in enumerate(images):
            copy = work / f"host{i}.r{r}"
            copy.write_bytes(image.read_bytes())
            copies.append(copy)
        started = time.monotonic()
        procs = [(cbt("full" if r == 0 else "incr", "-r", repo, "--provider", "scan", "--name", f"host{i}",
                      "--wait-lock", "5m", "--json", str(image), env=env), f"round {r} host{i}", copies[i])
                 for i, image in enumerate(images)]
        pruner = cbt("forget", "-r", repo, "--keep-last", str(KEEP), "--prune", "--wait-lock", "5m", "--json",
                     env=env)
        for proc, what, copy in procs:
            answer = finish(proc, what, failures)
            if answer is not None:
                expected[answer["id"]] = copy
                made += 1
        finish(pruner, f"round {r} forget --prune", failures)
        seconds.append(time.monotonic() - started)
    final = cbt("forget", "-r", repo, "--keep-last", str(KEEP), "--prune", "--json", env=env)
    finish(final, "final forget --prune", failures)

    listing = finish(cbt("list", "-r", repo, "--json", env=env), "list", failures) or {"backups": []}
    backups = listing["backups"]
    parents: dict[tuple[str, str | None], int] = {}
    for b in backups:
        parents[(b["name"], b["parent"])] = parents.get((b["name"], b["parent"]), 0) + 1
    forks = sum(n - 1 for n in parents.values() if n > 1)
    verified = finish(cbt("verify", "-r", repo, "--json", env=env), "verify", failures)
    exact = 0
    mismatches = []
    for b in backups:
        out = work / f"restored-{b['id']}"
        if finish(cbt("restore", "-r", repo, b["id"], str(out), "--json", env=env), f"restore {b['id']}",
                  failures) is None:
            continue
        if out.read_bytes() == expected[b["id"]].read_bytes():
            exact += 1
        else:
            mismatches.append(b["id"])
        out.unlink()
    return StoryResult(rounds, made, len(backups), forks, bool(verified and verified.get("ok")), exact, mismatches,
                       failures, [round(s, 2) for s in seconds])

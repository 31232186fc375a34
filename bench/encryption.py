"""Encrypted against unencrypted repositories, side by side in one run: a full backup and a restore of the
same mixed image (a quarter random, a quarter zeros, half text-like) into a plaintext repository and into
one sealed with each cipher. Reported: seconds, MiB/s, and each cipher's throughput as a share of the
plaintext one. Each contender runs its steps twice, interleaved, and the better time counts (the machine
is shared and noisy).

Usage: python bench/encryption.py [--size-mib 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_vs_local import make_image

from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.repository import Repository

MiB = 1 << 20
MODES = ("none", "aes-256-gcm", "chacha20-poly1305")


def one_round(work: Path, image: Path, mode: str, round_no: int) -> dict[str, float]:
    root = work / f"repo-{mode}-{round_no}"
    root.mkdir()
    repo = Repository.init(LocalStore(root), str(root), RepositoryConfig(encryption=mode), "bench passphrase")
    start = time.perf_counter()
    result = run_backup(repo, BackupOptions(str(image), "full", "bench", provider="scan"))
    full = time.perf_counter() - start
    out = work / "restored.img"
    start = time.perf_counter()
    run_restore(repo, RestoreOptions(result.manifest.ref.id, str(out)))
    restore = time.perf_counter() - start
    out.unlink()
    shutil.rmtree(root)
    return {"full": full, "restore": restore}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        image = work / "mixed.img"
        make_image(image, args.size_mib)
        best: dict[str, dict[str, float]] = {m: {"full": 1e9, "restore": 1e9} for m in MODES}
        for round_no in range(2):
            for mode in MODES:
                times = one_round(work, image, mode, round_no)
                for step, seconds in times.items():
                    best[mode][step] = min(best[mode][step], seconds)
    size = args.size_mib
    report: dict[str, Any] = {"size_mib": size}
    for mode in MODES:
        report[mode] = {step: {"seconds": round(s, 2), "mib_per_s": round(size / s, 1)}
                        for step, s in best[mode].items()}
    for mode in MODES[1:]:
        report[f"{mode}_vs_none"] = {step: round(best["none"][step] / best[mode][step], 3)
                                     for step in ("full", "restore")}
    if args.json:
        print(json.dumps(report))
        return
    for mode in MODES:
        r = report[mode]
        print(f"{mode:>18}: full {r['full']['seconds']:6.2f} s ({r['full']['mib_per_s']:7.1f} MiB/s), "
              f"restore {r['restore']['seconds']:6.2f} s ({r['restore']['mib_per_s']:7.1f} MiB/s)")
    for mode in MODES[1:]:
        ratio = report[f"{mode}_vs_none"]
        print(f"{mode} throughput / plaintext: full {ratio['full']:.0%}, restore {ratio['restore']:.0%}")


if __name__ == "__main__":
    main()

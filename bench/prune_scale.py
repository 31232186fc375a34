"""Prune at scale: a synthetic repository of 100,000 chunks and 1,000 backups (30 % of the chunks used by
no backup), pruned in a child process whose time and peak RSS are reported; then the same shape at a tenth
of the size on S3 (moto's server on loopback), counting the requests by kind.

Usage: python bench/prune_scale.py [--chunks 100000] [--backups 1000] [--s3-scale 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_vs_local import CountingStore, start_moto

from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.location import StoreOptions, open_store
from cbtbackup.repo.manifest import BackupRef, BackupStats, Manifest
from cbtbackup.repo.repository import Repository

CHILD = """
import json, resource, sys, time
from cbtbackup.pipeline.prune import PruneOptions, run_prune
from cbtbackup.repo.location import StoreOptions, open_repository
start = time.perf_counter()
result = run_prune(open_repository(sys.argv[1], StoreOptions(None)), PruneOptions())
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), **result.to_json(),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def populate(repo: Repository, chunks: int, backups: int, used_fraction: float = 0.7) -> None:
    """Chunk objects (small: prune never reads them) and manifests that use the first 70 % of them."""
    digests = [os.urandom(32) for _ in range(chunks)]
    for d in digests:
        repo.store.put(repo.chunk_key(d), b"x" * 64)
    used = int(chunks * used_fraction)
    per_backup = max(1, used // backups)
    for i in range(backups):
        extents = ExtentMap()
        for j, d in enumerate(digests[i * per_backup:(i + 1) * per_backup]):
            extents.append(j << 20, 1 << 20, d)
        ref = BackupRef(f"chain{i % 10}", f"2026010{1 + i // 400}T{i % 24:02d}0000{i:06d}Z", f"{i:016x}")
        repo.save_manifest(Manifest(ref, "full", "full", None, time.time(), f"/src/{i % 10}", "scan",
                                    len(extents) << 20, 1 << 20, extents.map_digest(), extents,
                                    stats=BackupStats()), newest=False)


def local_run(chunks: int, backups: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        location = str(Path(tmp) / "repo")
        repo = Repository.init(open_store(location, StoreOptions(None), create=True), location, RepositoryConfig())
        start = time.perf_counter()
        populate(repo, chunks, backups)
        built = time.perf_counter() - start
        done = subprocess.run([sys.executable, "-c", CHILD, location], capture_output=True, text=True, check=True)
        report: dict[str, Any] = json.loads(done.stdout)
        report["build_seconds"] = round(built, 1)
        return report


def s3_run(chunks: int, backups: int) -> dict[str, Any]:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    moto, endpoint = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CBTBACKUP_CACHE_DIR"] = str(Path(tmp) / "cache")
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            store = CountingStore(open_store("s3://bench/repo", StoreOptions(endpoint), create=True))
            repo = Repository.init(store, "s3://bench/repo", RepositoryConfig())
            populate(repo, chunks, backups)
            fresh = Repository.open(store, "s3://bench/repo")  # a host whose cache is cold
            store.calls.clear()
            start = time.perf_counter()
            result = run_prune(fresh, PruneOptions())
            return {"seconds": round(time.perf_counter() - start, 2), **result.to_json(),
                    "requests": dict(store.calls)}
    finally:
        moto.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--backups", type=int, default=1000)
    parser.add_argument("--s3-scale", type=float, default=0.1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"local": local_run(args.chunks, args.backups),
              "s3": s3_run(int(args.chunks * args.s3_scale), int(args.backups * args.s3_scale))}
    if args.json:
        print(json.dumps(report))
        return
    local, s3 = report["local"], report["s3"]
    print(f"local: {local['chunks']} chunks, {local['backups']} backups: deleted {local['chunks_deleted']} in "
          f"{local['seconds']} s, peak RSS {local['peak_rss_mib']} MiB (building took {local['build_seconds']} s)")
    print(f"s3:    {s3['chunks']} chunks, {s3['backups']} backups: deleted {s3['chunks_deleted']} in {s3['seconds']} s;"
          f" requests {s3['requests']}")


if __name__ == "__main__":
    main()

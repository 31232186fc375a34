"""S3 (moto's server on loopback, in its own process) against a local repository, side by side in one run.

The same mixed image is backed up in full, 1 % of it rewritten in scattered 64 KiB writes through the
engine, backed up incrementally, and restored — once into a local directory, once into S3. Reported:
seconds, throughput, the S3/local ratios, the store requests per GiB of data moved, and for backups the
requests per chunk stored (the target for a full into a new repository: at most 1.05).

Usage: python bench/s3_vs_local.py [--size-mib 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import boto3

from cbtbackup.engine import TrackedVolume
from cbtbackup.pipeline.backup import BackupOptions, run_backup
from cbtbackup.pipeline.restore import RestoreOptions, run_restore
from cbtbackup.repo.config import RepositoryConfig
from cbtbackup.repo.location import StoreOptions, open_store
from cbtbackup.repo.repository import Repository
from cbtbackup.repo.store import ListPage, ObjectInfo, Store, StoreCapabilities

MiB = 1 << 20


class CountingStore(Store):
    """Counts the calls that reach the backend: each is one request, but a whole listing (one per 1000 keys)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def put(self, key: str, data: bytes) -> None:
        self.calls["put"] += 1
        self.inner.put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.calls["put"] += 1
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls["get"] += 1
        return self.inner.get(key, offset, length)

    def stat(self, key: str) -> ObjectInfo | None:
        self.calls["stat"] += 1
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> ListPage:
        self.calls["list"] += 1
        return self.inner.list_page(prefix, start_after, limit)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        self.inner.delete(key)

    def depend_on(self, key: str) -> None:
        self.inner.depend_on(key)

    def sync(self) -> None:
        self.inner.sync()

    def capabilities(self) -> StoreCapabilities:
        return self.inner.capabilities()


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_image(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        for i in range(size_mib):
            kind = i % 4
            f.write(os.urandom(MiB) if kind == 0 else bytes(MiB) if kind == 1 else os.urandom(MiB // 2).hex().encode())


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (0 for none): moto's server is Python too, and on two cores
    its CPU is a large part of what an S3 run waits for."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def story(repo: Repository, store: CountingStore, image: Path, work: Path, size: int,
          server: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run_step(step: str) -> tuple[int, int]:
        """Run one step; return the bytes it moved and the chunks it stored."""
        if step == "restore":
            run_restore(repo, RestoreOptions("latest", str(work / "restored.img")))
            return size, 0
        kind: Literal["full", "incr"] = "full" if step == "full" else "incr"
        stats = run_backup(repo, BackupOptions(str(image), kind)).manifest.stats
        return stats.bytes_scanned, stats.chunks_new

    for step in ("full", "incr", "restore"):
        if step == "incr":
            rng = random.Random(1)
            with TrackedVolume.open(image) as vol:
                for block in rng.sample(range(size // (64 << 10)), size // 100 // (64 << 10)):
                    vol.write(block * (64 << 10), rng.randbytes(64 << 10))
        store.calls.clear()
        start, server_start = time.perf_counter(), cpu_seconds(server)
        moved, stored = run_step(step)
        seconds = time.perf_counter() - start
        server_cpu = cpu_seconds(server) - server_start
        requests = sum(store.calls.values())
        out[step] = {"seconds": round(seconds, 3), "mib_per_s": round(size / MiB / seconds, 1),
                     "requests": dict(store.calls),
                     "requests_per_gib_moved": round(requests / max(moved, 1) * (1 << 30), 1)}
        if server is not None:
            out[step]["server_cpu_s"] = round(server_cpu, 2)
        if stored:
            out[step]["chunks_stored"] = stored
            out[step]["requests_per_chunk_stored"] = round(requests / stored, 3)
    if (work / "restored.img").read_bytes() != image.read_bytes():
        raise SystemExit("restore differs")
    (work / "restored.img").unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    moto, endpoint = start_moto()
    report: dict[str, Any] = {"size_mib": args.size_mib}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
            base = work / "base.img"
            make_image(base, args.size_mib)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            for kind, location in (("local", str(work / "repo")), ("s3", "s3://bench/repo")):
                image = work / f"{kind}.img"
                shutil.copyfile(base, image)
                TrackedVolume.track(image).close()
                store = CountingStore(open_store(location, StoreOptions(endpoint), create=True))
                repo = Repository.init(store, location, RepositoryConfig())
                report[kind] = story(repo, store, image, work, args.size_mib * MiB,
                                     moto.pid if kind == "s3" else None)
                image.unlink()
    finally:
        moto.kill()
    report["s3_vs_local"] = {s: round(report["local"][s]["seconds"] / report["s3"][s]["seconds"], 3)
                             for s in ("full", "incr", "restore")}
    if args.json:
        print(json.dumps(report))
        return
    for kind in ("local", "s3"):
        for step, r in report[kind].items():
            print(f"{kind:>5} {step:>7}: {r['seconds']:7.2f} s {r['mib_per_s']:8.1f} MiB/s  "
                  f"requests {sum(r['requests'].values()):5d} ({r['requests_per_gib_moved']:.0f}/GiB"
                  + (f", {r['requests_per_chunk_stored']:.3f}/chunk stored" if "chunks_stored" in r else "")
                  + f") {r['requests']}"
                  + (f", server CPU {r['server_cpu_s']:.1f} s" if "server_cpu_s" in r else ""))
    print("S3 throughput / local: " + ", ".join(f"{k} {v:.0%}" for k, v in report["s3_vs_local"].items()))


if __name__ == "__main__":
    main()

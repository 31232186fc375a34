"""Many hosts in one bucket: repositories of 1, 20 and 200 chains x 30 backups each on one bucket of Ceph's
RADOS Gateway, then the S3 requests and seconds of the commands a fleet runs, at each size.

Each chain is one small image (random data, made here) backed up by the scan provider: one full, then
incrementals that each rewrite one random 4 KiB block. The repositories are built in-process by worker
processes; the measured commands are real `cbtbackup` processes whose S3 traffic goes through a counting
proxy (tests/s3/fault_proxy.py, no faults). Every repository has its own, initially empty, cache
directory, and the commands run in this order, as one host's session would:

    list --name host000        (cold cache: reads that chain's manifests)
    incr  host000
    list                        (cold for the other chains)
    list                        (warm: every manifest is cached)
    stats
    forget --name host000 --keep-last 10
    prune
    verify <host000's newest backup>

Goal (issue 25): a command that touches one chain costs at most 1.1x its 1-chain figure in requests;
`list` and `prune` grow no faster than linearly in the number of chains.

Uses the RGW named by CBTBACKUP_TEST_RGW_ENDPOINT (and CBTBACKUP_TEST_RGW_KEYS=ACCESS:SECRET), or starts
one with tests/servers/ceph-cluster and stops it afterwards.

Usage: python bench/s3_many_hosts.py [--sizes 1,20,200] [--backups 30] [--image-kib 512] [--workers 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbtbackup.pipeline.backup import BackupOptions, run_backup  # noqa: E402
from cbtbackup.repo.location import StoreOptions, open_repository  # noqa: E402
from tests.s3.fault_proxy import FaultProxy  # noqa: E402

PASSWORD = "bench-many-hosts"
BLOCK = 4096


def chain_name(index: int) -> str:
    return f"host{index:03d}"


def build_chain(task: tuple[str, str, str, int, int, int]) -> float:
    """One host's chain: a full and ``backups - 1`` incrementals of its own image. Returns seconds."""
    location, endpoint, images, index, backups, image_bytes = task
    rng = random.Random(index)
    image = Path(images) / f"{chain_name(index)}.img"
    image.write_bytes(rng.randbytes(image_bytes))
    start = time.perf_counter()
    repo = open_repository(location, StoreOptions(endpoint), PASSWORD)
    for number in range(backups):
        if number:
            with image.open("r+b") as f:
                f.seek(rng.randrange(image_bytes // BLOCK) * BLOCK)
                f.write(rng.randbytes(BLOCK))
        run_backup(repo, BackupOptions(str(image), "incr" if number else "full", name=chain_name(index),
                                       provider="scan"))
    return time.perf_counter() - start


def cli(args: list[str], location: str, endpoint: str, env: dict[str, str], check: bool = True
        ) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "cbtbackup", *args, "-r", location, "--endpoint-url", endpoint,
                           "--json"], capture_output=True, text=True, env=env)
    if check and done.returncode != 0:
        raise SystemExit(f"cbtbackup {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    lines = done.stdout.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return result


def measure(location: str, proxy: FaultProxy, images: Path, cache: Path) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "CBTBACKUP_CACHE_DIR": str(cache), "CBTBACKUP_PASSWORD": PASSWORD}
    image = images / f"{chain_name(0)}.img"
    with image.open("r+b") as f:
        f.seek(0)
        f.write(os.urandom(BLOCK))
    steps: list[tuple[str, list[str]]] = [
        ("list --name (cold)", ["list", "--name", chain_name(0)]),
        ("incr", ["incr", str(image), "--name", chain_name(0), "--provider", "scan"]),
        ("list (cold)", ["list"]),
        ("list (warm)", ["list"]),
        ("stats", ["stats"]),
        ("forget --keep-last 10", ["forget", "--name", chain_name(0), "--keep-last", "10"]),
        ("prune", ["prune"]),
    ]
    results: dict[str, dict[str, Any]] = {}
    newest = ""
    for label, args in steps:
        proxy.reset_counts()
        start = time.perf_counter()
        out = cli(args, location, proxy.url, env)
        results[label] = requests_of(proxy, time.perf_counter() - start)
        if label == "incr":
            newest = str(out["id"])
    proxy.reset_counts()
    start = time.perf_counter()
    cli(["verify", newest], location, proxy.url, env)
    results["verify (one backup)"] = requests_of(proxy, time.perf_counter() - start)
    return results


def requests_of(proxy: FaultProxy, seconds: float) -> dict[str, Any]:
    lists = sum(1 for p in proxy.get_paths if "list-type=" in p or "prefix=" in p)
    counts = dict(proxy.counts)
    counts["LIST"] = lists
    counts["GET"] = counts.get("GET", 0) - lists
    return {"requests": sum(proxy.counts.values()), "seconds": round(seconds, 2),
            **{k: v for k, v in sorted(counts.items()) if v}}


def start_rgw(work: Path) -> tuple[str, Path | None]:
    endpoint = os.environ.get("CBTBACKUP_TEST_RGW_ENDPOINT")
    if endpoint:
        return endpoint, None
    cluster = work / "ceph"
    started = subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "start", str(cluster), "7482"],
                             capture_output=True, text=True, check=True)
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    os.environ["CBTBACKUP_TEST_RGW_KEYS"] = env["CBTBACKUP_TEST_RGW_KEYS"]
    return env["CBTBACKUP_TEST_RGW_ENDPOINT"], cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,20,200", help="chain counts, comma-separated")
    parser.add_argument("--backups", type=int, default=30, help="backups per chain")
    parser.add_argument("--image-kib", type=int, default=512)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict[str, Any] = {"backups_per_chain": args.backups, "image_kib": args.image_kib, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="cbt-bench-") as tmp:
        work = Path(tmp)
        endpoint, cluster = start_rgw(work)
        access, _, secret = os.environ.get("CBTBACKUP_TEST_RGW_KEYS", "testkey:testsecret").partition(":")
        os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                          CBTBACKUP_CACHE_DIR=str(work / "build-cache"))
        proxy = FaultProxy(endpoint)
        try:
            bucket = f"bench-{uuid.uuid4().hex[:10]}"  # one bucket, one prefix per repository
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            for size in sizes:
                location = f"s3://{bucket}/fleet{size}"
                images = work / f"images{size}"
                images.mkdir()
                cli(["init", "--chunk-size", "64KiB"], location, endpoint,
                    {**os.environ, "CBTBACKUP_PASSWORD": PASSWORD})
                start = time.perf_counter()
                tasks = [(location, endpoint, str(images), c, args.backups, args.image_kib << 10) for c in range(size)]
                with multiprocessing.get_context("spawn").Pool(min(args.workers, size)) as pool:
                    pool.map(build_chain, tasks, chunksize=1)
                built = time.perf_counter() - start
                print(f"built {size} chains x {args.backups} backups in {built:.0f} s", file=sys.stderr)
                report["sizes"][str(size)] = {"build_seconds": round(built, 1),
                                              "commands": measure(location, proxy, images, work / f"cache{size}")}
        finally:
            proxy.close()
            if cluster is not None:
                subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "stop", str(cluster)])
    if args.json:
        print(json.dumps(report))
        return
    print_table(report, sizes)


def print_table(report: dict[str, Any], sizes: list[str] | list[int]) -> None:
    base = str(sizes[0])
    commands = list(report["sizes"][base]["commands"])
    head = "".join(f"{str(s) + ' chains':>22}" for s in sizes)
    print(f"{'command':24}{head}   requests vs {base} chain(s)")
    for command in commands:
        cells, ratios = "", []
        for s in sizes:
            r = report["sizes"][str(s)]["commands"][command]
            cells += f"{r['requests']:>10} req {r['seconds']:>6.2f} s"
        first = report["sizes"][base]["commands"][command]["requests"]
        for s in sizes[1:]:
            ratios.append(f"{report['sizes'][str(s)]['commands'][command]['requests'] / max(first, 1):.2f}x")
        print(f"{command:24}{cells}   {' '.join(ratios)}")
    for s in sizes:
        detail = {c: {k: v for k, v in r.items() if k not in ("requests", "seconds")}
                  for c, r in report["sizes"][str(s)]["commands"].items()}
        print(f"{s} chains (built in {report['sizes'][str(s)]['build_seconds']} s): {json.dumps(detail)}")


if __name__ == "__main__":
    main()

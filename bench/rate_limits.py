"""--limit-upload / --limit-download: the rate achieved against the limit, for limits of 1, 10 and 50 MiB/s.

For each limit and direction, four threads (the pipelines' parallelism) move 4 MiB objects for about
--seconds through the store that `open_store` builds for the options the CLI passes (RateLimitedStore over
RetryingStore over S3Store, or over a directory), and the achieved rate is bytes moved / wall time. One
end-to-end `cbtbackup backup --limit-upload` of incompressible data is timed as well, to show the limit holds in
the real command (its rate includes snapshot setup, so it sits a little under the limit).

Uses the RGW named by CBTBACKUP_TEST_RGW_ENDPOINT (and CBTBACKUP_TEST_RGW_KEYS=ACCESS:SECRET) when set, a local
directory otherwise (or with --local).

Usage: python bench/rate_limits.py [--seconds 5] [--local] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbtbackup.repo.location import StoreOptions, open_store  # noqa: E402
from cbtbackup.repo.store import Store  # noqa: E402

MIB = 1 << 20
OBJECT = 4 * MIB
THREADS = 4


def _move(store: Store, direction: str, keys: list[str], seconds: float) -> tuple[int, float]:
    """Bytes moved and seconds taken by THREADS threads working through ``keys`` until ``seconds`` pass."""
    body = os.urandom(OBJECT)
    moved = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    index = iter(range(len(keys)))

    def work() -> None:
        nonlocal moved
        while time.monotonic() < deadline:
            with lock:
                i = next(index, None)
            if i is None:
                return
            if direction == "upload":
                store.put(keys[i], body)
                n = len(body)
            else:
                n = len(store.get(keys[i]))
            with lock:
                moved += n

    start = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return moved, time.monotonic() - start


def _store_rows(location: str, endpoint: str | None, seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for limit_mib in (1, 10, 50):
        limit = limit_mib * MIB
        count = int(limit * seconds * 1.5 / OBJECT) + THREADS + 1
        keys = [f"bench/{limit_mib}/{i:05d}" for i in range(count)]
        up = open_store(location, StoreOptions(endpoint_url=endpoint, limit_upload=limit), create=True)
        moved, took = _move(up, "upload", keys, seconds)
        rows.append({"direction": "upload", "limit_mib_s": limit_mib, "achieved_mib_s": moved / took / MIB,
                     "ratio": moved / took / limit})
        down = open_store(location, StoreOptions(endpoint_url=endpoint, limit_download=limit))
        stored = [k for k in keys if down.stat(k) is not None]
        moved, took = _move(down, "download", stored, seconds)
        rows.append({"direction": "download", "limit_mib_s": limit_mib, "achieved_mib_s": moved / took / MIB,
                     "ratio": moved / took / limit})
        for k in stored:
            down.delete(k)
    return rows


def _cli_row(location: str, work: Path, limit_mib: int) -> dict[str, object]:
    image = work / "cli.img"
    image.write_bytes(os.urandom(limit_mib * MIB * 10))
    env = dict(os.environ, CBTBACKUP_REPO=location, CBTBACKUP_PASSWORD="bench")
    cbt = [sys.executable, "-m", "cbtbackup"]
    subprocess.run([*cbt, "init", "--encryption", "none", "--json"], env=env, check=True, capture_output=True)
    start = time.monotonic()
    out = subprocess.run([*cbt, "full", str(image), "--name", "cli", "--provider", "scan", "--json",
                          "--limit-upload", str(limit_mib * 1024)], env=env, check=True, capture_output=True,
                         text=True).stdout
    took = time.monotonic() - start
    stored = int(json.loads(out.splitlines()[-1])["bytes_stored"])
    return {"direction": "cli backup", "limit_mib_s": limit_mib, "achieved_mib_s": stored / took / MIB,
            "ratio": stored / took / (limit_mib * MIB)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    endpoint = None if args.local else os.environ.get("CBTBACKUP_TEST_RGW_ENDPOINT")
    with tempfile.TemporaryDirectory(prefix="cbt-bench-") as tmp:
        work = Path(tmp)
        os.environ["CBTBACKUP_CACHE_DIR"] = str(work / "cache")
        if endpoint:
            access, _, secret = os.environ.get("CBTBACKUP_TEST_RGW_KEYS", "testkey:testsecret").partition(":")
            os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret,
                              AWS_DEFAULT_REGION="us-east-1", CBTBACKUP_S3_ENDPOINT=endpoint)
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            location, where = f"s3://{bucket}/rates", f"RGW {endpoint}"
        else:
            location, where = str(work / "repo"), "local directory"
        rows = _store_rows(location, endpoint, args.seconds)
        rows.append(_cli_row(location.rstrip("/") + "-cli" if endpoint else str(work / "cli-repo"), work, 10))
    if args.json:
        print(json.dumps({"store": where, "rows": rows}))
        return
    print(f"store: {where}")
    print(f"{'direction':12} {'limit MiB/s':>11} {'achieved':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['direction']!s:12} {r['limit_mib_s']!s:>11} {float(str(r['achieved_mib_s'])):9.2f} "
              f"{float(str(r['ratio'])):6.3f}")


if __name__ == "__main__":
    main()

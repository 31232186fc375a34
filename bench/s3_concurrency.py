"""Four backup processes on four chains and one `forget --keep-last 3 --prune`, racing on one bucket of
Ceph's RADOS Gateway, for N rounds (tests/s3/concurrency_story.py). Reports forks, verify, byte-exact
restores and seconds per round.

Uses the RGW named by CBTBACKUP_TEST_RGW_ENDPOINT (and CBTBACKUP_TEST_RGW_KEYS=ACCESS:SECRET), or starts
one with tests/servers/ceph-cluster and stops it afterwards.

Usage: python bench/s3_concurrency.py [--rounds 10] [--size-mib 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3.concurrency_story import run_story  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size-mib", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbt-bench-") as tmp:
        work = Path(tmp)
        endpoint = os.environ.get("CBTBACKUP_TEST_RGW_ENDPOINT")
        cluster = None
        if not endpoint:
            cluster = work / "ceph"
            started = subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "start", str(cluster), "7481"],
                                     capture_output=True, text=True, check=True)
            env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
            endpoint = env["CBTBACKUP_TEST_RGW_ENDPOINT"]
            os.environ["CBTBACKUP_TEST_RGW_KEYS"] = env["CBTBACKUP_TEST_RGW_KEYS"]
        access, _, secret = os.environ.get("CBTBACKUP_TEST_RGW_KEYS", "testkey:testsecret").partition(":")
        os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                          CBTBACKUP_CACHE_DIR=str(work / "cache"))
        try:
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            result = run_story(f"s3://{bucket}/fleet", endpoint, work, args.rounds, args.size_mib << 20)
        finally:
            if cluster is not None:
                subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "stop", str(cluster)])
    report = result.as_dict()
    if args.json:
        print(json.dumps(report))
        return
    for name, value in report.items():
        print(f"{name:20} {value}")


if __name__ == "__main__":
    main()

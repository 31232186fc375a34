"""The whole story against S3: a moto server on loopback stands in for AWS, MinIO or Ceph RGW.

Run: python examples/s3_story.py
It starts `moto_server` on 127.0.0.1, creates a bucket, then runs `cbtbackup init`, `track`, `full`,
scattered writes through the engine and `incr` twice, `list`, `verify`, and restores every backup,
checking each byte for byte. With a real service, set AWS credentials as usual and pass its URL with
--endpoint-url (or CBTBACKUP_S3_ENDPOINT); leave it out for AWS itself.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from cbtbackup.engine import TrackedVolume

MiB = 1 << 20


PASSWORD_FILE: list[str] = []  # the repository is encrypted: its passphrase is read from this file


def cbtbackup(*args: str) -> dict[str, object]:
    print("$ cbtbackup " + " ".join(args))
    if "-r" in args:
        args = (*args, "--password-file", *PASSWORD_FILE)
    done = subprocess.run([sys.executable, "-m", "cbtbackup", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"cbtbackup {args[0]} failed with exit code {done.returncode}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ACCESS_KEY_ID="example", AWS_SECRET_ACCESS_KEY="example",
                          AWS_DEFAULT_REGION="us-east-1", CBTBACKUP_S3_ENDPOINT=endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="backups")
        repo = "s3://backups/hosts/demo"
        rng = random.Random(1)
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["CBTBACKUP_CACHE_DIR"] = str(Path(tmp) / "cache")
            image = Path(tmp) / "disk.img"
            image.write_bytes(rng.randbytes(32 * MiB))
            secret = Path(tmp) / "passphrase"
            secret.write_text("an example passphrase, kept in a file only root can read\n")
            secret.chmod(0o600)
            PASSWORD_FILE.append(str(secret))
            cbtbackup("init", "-r", repo)
            cbtbackup("track", str(image))
            points = [(str(cbtbackup("full", "-r", repo, str(image))["id"]), image.read_bytes())]
            for _ in range(2):
                with TrackedVolume.open(image) as vol:
                    for _ in range(25):
                        vol.write(rng.randrange(vol.size - 65536), rng.randbytes(65536))
                result = cbtbackup("incr", "-r", repo, str(image))
                print(f"  incr by {result['method']}: {result['chunks_new']} new chunks")
                points.append((str(result["id"]), image.read_bytes()))
            cbtbackup("list", "-r", repo)
            cbtbackup("verify", "-r", repo)
            for backup_id, expected in points:
                target = Path(tmp) / f"{backup_id}.img"
                cbtbackup("restore", "-r", repo, backup_id, str(target))
                if target.read_bytes() != expected:
                    sys.exit(f"restore of {backup_id} differs")
            print(f"all {len(points)} restores from S3 match")
    finally:
        server.kill()


if __name__ == "__main__":
    main()

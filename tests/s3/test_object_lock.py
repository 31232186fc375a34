"""Immutable backups on a bucket with S3 Object Lock, on moto and on Ceph's RADOS Gateway: what init
refuses, what forget and prune keep while it is locked, how prune extends locks, and — on RGW, which
enforces bucket policies — that the backing-up host's own append-only key cannot destroy a backup and a
restore from before an attack still works.

Locks are proven on RGW alone (the ``rgw_endpoint`` fixture): moto's Object Lock is partial (its
GetObjectRetention answers 500)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.conftest import MakeImage, RunCli, stored_manifests
from tests.s3.conftest import s3_client

MiB = 1 << 20
PERIOD = 6.0  # seconds each object stays locked in these tests


@pytest.fixture
def lock_bucket(rgw_endpoint: str) -> str:
    name = f"cbt-lock-{uuid.uuid4().hex[:10]}"
    s3_client(rgw_endpoint).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def versions(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    answer = client.list_object_versions(Bucket=bucket, Prefix=prefix)
    return [*answer.get("Versions", []), *answer.get("DeleteMarkers", [])]


def overwrite(image: Path, offset: int, size: int, seed: int) -> None:
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size) if seed < 0 else bytes([seed]) * size)


def test_init_refuses_a_bucket_without_object_lock(cli: RunCli, s3_endpoint: str, bucket: str) -> None:
    result = cli("init", "-r", f"s3://{bucket}/r", "--endpoint-url", s3_endpoint, "--encryption", "none",
                 "--object-lock", "compliance", "--json")
    assert result.code == 2
    assert result.json["error"].startswith(
        f"bucket '{bucket}' does not have Object Lock enabled")
    assert "Traceback" not in result.err
    assert versions(s3_client(s3_endpoint), bucket, "") == []  # nothing was written


def test_init_refuses_object_lock_on_a_directory(cli: RunCli, tmp_path: Path) -> None:
    result = cli("init", "-r", tmp_path / "repo", "--encryption", "none", "--object-lock", "governance")
    assert result.code == 2
    assert "cannot lock objects" in result.err


def test_forget_and_prune_keep_what_is_locked_and_remove_it_after(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, rgw_endpoint: str, lock_bucket: str
) -> None:
    client = s3_client(rgw_endpoint)
    repo, ep = f"s3://{lock_bucket}/r", ("--endpoint-url", rgw_endpoint)
    made = cli("init", "-r", repo, *ep, "--encryption", "none", "--chunk-size", "256KiB", "--object-lock",
               "COMPLIANCE", "--lock-period", f"{PERIOD:g}s", "--json")
    assert made.code == 0, made.err
    assert made.json["object_lock"] == {"mode": "COMPLIANCE", "seconds": PERIOD}
    image = make_image(2 * MiB)
    ids = []
    for n in range(3):
        if n:
            overwrite(image, 0, 256 << 10, n)  # the whole first chunk: the old one becomes unused
        backup = cli("full" if n == 0 else "incr", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image,
                     "--json")
        assert backup.code == 0, backup.err
        ids.append(backup.json["id"])
    final = image.read_bytes()
    # Every object but the locks carries the retention; no head is kept; no lock file is left, in any version.
    manifest_key = next(v["Key"] for v in versions(client, lock_bucket, "r/backups/"))
    retention = client.get_object_retention(Bucket=lock_bucket, Key=manifest_key)["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    assert 0 < retention["RetainUntilDate"].timestamp() - time.time() <= PERIOD + 1
    chunk = next(v for v in versions(client, lock_bucket, "r/chunks/"))
    assert client.get_object_retention(Bucket=lock_bucket, Key=chunk["Key"])["Retention"]["Mode"] == "COMPLIANCE"
    assert versions(client, lock_bucket, "r/heads/") == []
    assert versions(client, lock_bucket, "r/locks/") == []
    # Not even the bucket's owner can delete a locked version.
    with pytest.raises(botocore.exceptions.ClientError):
        client.delete_object(Bucket=lock_bucket, Key=chunk["Key"], VersionId=chunk["VersionId"])

    early = cli("forget", "-r", repo, *ep, "--keep-last", "1", "--prune", "--json")
    assert early.code == 0, early.err
    assert {b["id"] for b in early.json["locked"]} == set(ids[:2])
    assert early.json["removed"] == []
    assert all(b["until"] > time.time() for b in early.json["locked"])
    text = cli("forget", "-r", repo, *ep, "--keep-last", "1", "--dry-run")
    assert "locked until" in text.out

    time.sleep(PERIOD + 1)
    # Both go at once: the newer is removed first, so no manifest is rewritten (freshly locked) and then due.
    late = cli("forget", "-r", repo, *ep, "--keep-last", "1", "--prune", "--json")
    assert late.code == 0, late.err
    assert {b["id"] for b in late.json["removed"]} == set(ids[:2])
    assert late.json["prune"]["chunks_deleted"] == 2  # the two first chunks the later backups replaced
    assert late.json["prune"]["chunks_kept_locked"] == 0
    # Deleted means every version gone, not a delete marker over a version that still costs storage.
    left = {v["Key"] for v in versions(client, lock_bucket, "r/backups/")}
    assert len(left) == 1 and ids[2] in left.pop()
    out = tmp_path / "restored.img"
    assert cli("restore", "-r", repo, *ep, "latest", out).code == 0
    assert out.read_bytes() == final
    assert cli("verify", "-r", repo, *ep, "--json").json["ok"]


def test_prune_keeps_an_unused_chunk_while_it_is_locked(
    cli: RunCli, make_image: MakeImage, rgw_endpoint: str, lock_bucket: str
) -> None:
    repo, ep = f"s3://{lock_bucket}/r", ("--endpoint-url", rgw_endpoint)
    assert cli("init", "-r", repo, *ep, "--encryption", "none", "--chunk-size", "256KiB", "--object-lock",
               "governance", "--lock-period", "1h").code == 0
    image = make_image(1 * MiB)
    first = cli("full", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image, "--json").json["id"]
    overwrite(image, 0, 256 << 10, -1)
    assert cli("incr", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image).code == 0
    # The full is locked: forget keeps it, so its first chunk is still needed.
    assert cli("forget", "-r", repo, *ep, first, "--json").json["locked"][0]["id"] == first
    pruned = cli("prune", "-r", repo, *ep, "--json")
    assert pruned.code == 0 and pruned.json["chunks_deleted"] == 0 and pruned.json["chunks_kept_locked"] == 0


def test_prune_extends_the_locks_of_what_backups_need(
    cli: RunCli, make_image: MakeImage, rgw_endpoint: str, lock_bucket: str
) -> None:
    client = s3_client(rgw_endpoint)
    repo, ep = f"s3://{lock_bucket}/r", ("--endpoint-url", rgw_endpoint)
    period = 12.0  # long enough that init and a backup take less than half of it
    assert cli("init", "-r", repo, *ep, "--encryption", "none", "--chunk-size", "256KiB", "--object-lock",
               "compliance", "--lock-period", f"{period:g}s").code == 0
    image = make_image(1 * MiB)
    assert cli("full", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image).code == 0
    keys = [v["Key"] for v in versions(client, lock_bucket, "r/") if not v["Key"].startswith("r/locks/")]
    before = {k: client.get_object_retention(Bucket=lock_bucket, Key=k)["Retention"]["RetainUntilDate"] for k in keys}
    fresh = cli("prune", "-r", repo, *ep, "--json")
    assert fresh.json["retention_extended"] == 0  # written less than half a period ago: nothing is due
    time.sleep(period / 2 + 0.5)
    due = cli("prune", "-r", repo, *ep, "--json")
    assert due.code == 0, due.err
    # 4 chunks (zero chunks are not stored: the image is random), the manifest, the config.
    assert due.json["retention_extended"] == len(keys)
    for k in keys:
        after = client.get_object_retention(Bucket=lock_bucket, Key=k)["Retention"]["RetainUntilDate"]
        assert after.timestamp() > before[k].timestamp() + period / 2
    time.sleep(period / 2 + 1)  # past every first lock: the extended ones still hold
    chunk = next(v for v in versions(client, lock_bucket, "r/chunks/"))
    with pytest.raises(botocore.exceptions.ClientError):
        client.delete_object(Bucket=lock_bucket, Key=chunk["Key"], VersionId=chunk["VersionId"])


def append_only_policy(bucket: str, prefix: str, user: str) -> dict[str, Any]:
    """The bucket policy docs/s3.md gives for a backing-up host (kept in step with it)."""
    host = {"AWS": [f"arn:aws:iam:::user/{user}"]}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "HostListsTheBucket", "Effect": "Allow", "Principal": host,
         "Action": ["s3:ListBucket", "s3:ListBucketVersions"], "Resource": [f"arn:aws:s3:::{bucket}"]},
        {"Sid": "HostReadsAndAddsObjects", "Effect": "Allow", "Principal": host,
         "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:GetObjectRetention",
                    "s3:PutObjectRetention"],
         "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"]},
        {"Sid": "HostRemovesOnlyItsLocks", "Effect": "Allow", "Principal": host,
         "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
         "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/locks/*"]},
    ]}


def test_the_bucket_owner_maintains_what_the_hosts_key_wrote(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, rgw_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On RGW an object belongs to the user who wrote it: without the owner's grant on every PUT the
    maintenance machine could not read a host's backups (measured: GetObject answers AccessDenied)."""
    host_access, _, host_secret = os.environ.get("CBTBACKUP_TEST_RGW_HOST_KEYS", "hostkey:hostsecret").partition(":")
    owner_access, owner_secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    bucket = f"cbt-own-{uuid.uuid4().hex[:10]}"
    owner = s3_client(rgw_endpoint)
    owner.create_bucket(Bucket=bucket)
    owner.put_bucket_policy(Bucket=bucket, Policy=json.dumps(append_only_policy(bucket, "r", "host")))
    repo, ep = f"s3://{bucket}/r", ("--endpoint-url", rgw_endpoint)
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "fleet secret")
    assert cli("init", "-r", repo, *ep, "--chunk-size", "256KiB").code == 0

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", host_access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", host_secret)
    image = make_image(2 * MiB)
    first = cli("full", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image, "--json")
    assert first.code == 0, first.err
    overwrite(image, 700_000, 4096, -1)
    assert cli("incr", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image).code == 0
    good = image.read_bytes()
    denied = cli("forget", "-r", repo, *ep, first.json["id"])
    assert denied.code == 7 and "access denied" in denied.err  # the host cannot remove a backup

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", owner_access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", owner_secret)
    monkeypatch.setenv("CBTBACKUP_CACHE_DIR", str(tmp_path / "maintenance-cache"))
    written_by_host = [o["Key"] for o in owner.list_objects_v2(Bucket=bucket, Prefix="r/")["Contents"]
                       if o["Key"].startswith(("r/chunks/", "r/backups/"))]
    assert written_by_host and all(owner.get_object(Bucket=bucket, Key=k)["Body"].read() for k in written_by_host)
    assert cli("verify", "-r", repo, *ep, "--json").json["ok"]
    forgot = cli("forget", "-r", repo, *ep, "--name", "vm", "--keep-last", "1", "--prune", "--json")
    assert forgot.code == 0, forgot.err
    out = tmp_path / "restored.img"
    assert cli("restore", "-r", repo, *ep, "vm@latest", out).code == 0
    assert out.read_bytes() == good


def test_the_hosts_own_key_cannot_destroy_a_locked_backup(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, rgw_endpoint: str,
    lock_bucket: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    host_access, _, host_secret = os.environ.get("CBTBACKUP_TEST_RGW_HOST_KEYS", "hostkey:hostsecret").partition(":")
    owner = s3_client(rgw_endpoint)
    owner.put_bucket_policy(Bucket=lock_bucket, Policy=json.dumps(append_only_policy(lock_bucket, "r", "host")))
    repo, ep = f"s3://{lock_bucket}/r", ("--endpoint-url", rgw_endpoint)
    monkeypatch.setenv("CBTBACKUP_PASSWORD", "host secret")
    assert cli("init", "-r", repo, *ep, "--chunk-size", "256KiB", "--object-lock", "compliance",
               "--lock-period", "1h").code == 0  # by the owner, once

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", host_access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", host_secret)
    host = s3_client(rgw_endpoint)
    image = make_image(2 * MiB)
    assert cli("full", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image).code == 0
    overwrite(image, 300_000, 4096, -1)
    incr = cli("incr", "-r", repo, *ep, "--provider", "scan", "--name", "vm", image, "--json")
    assert incr.code == 0, incr.err
    good = image.read_bytes()
    time.sleep(1.5)
    before_attack = time.time()
    time.sleep(1.5)

    # The attacker holds the host and its key. Deleting fails, by version or not; so do un-versioning the
    # bucket, dropping the policy, and shortening a lock.
    objects = [v for v in versions(host, lock_bucket, "r/") if not v["Key"].startswith("r/locks/")]
    for v in objects:
        with pytest.raises(botocore.exceptions.ClientError):
            host.delete_object(Bucket=lock_bucket, Key=v["Key"], VersionId=v["VersionId"])
        with pytest.raises(botocore.exceptions.ClientError):
            host.delete_object(Bucket=lock_bucket, Key=v["Key"])
    with pytest.raises(botocore.exceptions.ClientError):
        host.put_bucket_versioning(Bucket=lock_bucket, VersioningConfiguration={"Status": "Suspended"})
    with pytest.raises(botocore.exceptions.ClientError):
        host.delete_bucket_policy(Bucket=lock_bucket)
    manifest_key = "r/" + stored_manifests(("-r", repo, *ep))[incr.json["id"]]
    manifest = next(v for v in objects if v["Key"] == manifest_key)
    with pytest.raises(botocore.exceptions.ClientError):
        host.put_object_retention(Bucket=lock_bucket, Key=manifest["Key"], VersionId=manifest["VersionId"],
                                  Retention={"Mode": "COMPLIANCE", "RetainUntilDate": time.time() + 5})
    # What it can do is write over: every manifest and chunk, and a forged config.
    for v in objects:
        host.put_object(Bucket=lock_bucket, Key=v["Key"], Body=b"encrypted by ransomware")
    broken = cli("restore", "-r", repo, *ep, "latest", tmp_path / "nope.img")
    assert broken.code != 0 and "Traceback" not in broken.err and len(broken.err.strip().splitlines()) == 1

    # The locked versions are all still there: read the repository as it was before the attack.
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before_attack))
    listed = cli("list", "-r", repo, *ep, "--as-of", when, "--json")
    assert listed.code == 0, listed.err
    assert [b["id"] for b in listed.json["backups"]][-1] == incr.json["id"]
    out = tmp_path / "restored.img"
    restored = cli("restore", "-r", repo, *ep, "--as-of", when, "latest", out)
    assert restored.code == 0, restored.err
    assert out.read_bytes() == good
    assert cli("verify", "-r", repo, *ep, "--as-of", when, "--json").json["ok"]
    # A view of the past writes nothing.
    refused = cli("incr", "-r", repo, *ep, "--as-of", when, "--provider", "scan", "--name", "vm", image)
    assert refused.code == 2 and "read-only" in refused.err

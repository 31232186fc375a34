"""S3 repositories end to end through the CLI, against moto's server and Ceph's RADOS Gateway over real HTTP
on loopback."""

from __future__ import annotations

import contextlib
import datetime
import random
import socket
import time
import uuid
from pathlib import Path

import botocore.auth
import pytest
from moto.core import enable_iam_authentication

from cbtbackup.engine import TrackedVolume
from tests.conftest import MakeImage, RunCli
from tests.s3.conftest import free_port, s3_client
from tests.s3.fault_proxy import FaultPolicy, FaultProxy
from tests.servers.s3_servers import S3Server

MiB = 1 << 20


def scribble(image: Path, rng: random.Random, writes: int = 12) -> None:
    with TrackedVolume.open(image) as vol:
        for _ in range(writes):
            offset = rng.randrange(vol.size - 70_000)
            vol.write(offset, rng.randbytes(rng.choice([100, 4096, 65536])))


def test_full_incrementals_list_verify_restore(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    repo = f"s3://{bucket}/team/vm1"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "256KiB").code == 0
    image = make_image(12 * MiB + 777)
    cli("track", image)
    rng = random.Random(3)
    points = []
    first = cli("full", "-r", repo, *ep, image, "--json")
    assert first.code == 0, first.err
    points.append((first.json["id"], image.read_bytes()))
    for _ in range(3):
        scribble(image, rng)
        proxy.reset_counts()
        inc = cli("incr", "-r", repo, *ep, image, "--json")
        assert inc.code == 0, inc.err
        assert inc.json["method"] == "cbt"
        # Requests follow the changed data: a PUT per new chunk, one page listing the chunk keys (which
        # says which chunks the small repository holds: no HEAD per chunk), the manifest, the head pointer,
        # the lock (put, listed, checked before the commit, deleted), and reads of the config, the key slots
        # (listed, one read), the chain's head and the quarantine — never one per chunk of the image or per
        # earlier backup — and at most one chunk per block the tracking check sampled.
        new = inc.json["chunks_new"]
        sampled = -(-inc.json["bytes_sampled_unchanged"] // (64 << 10))
        assert proxy.counts["PUT"] == new + 3
        assert proxy.counts["HEAD"] == 0
        assert proxy.counts["GET"] <= 8 + sampled, proxy.get_paths
        assert proxy.counts["DELETE"] == 1
        points.append((inc.json["id"], image.read_bytes()))
    listing = cli("list", "-r", repo, *ep, "--json").json["backups"]
    assert [b["id"] for b in listing] == [p[0] for p in points]
    assert cli("verify", "-r", repo, *ep, "--json").json["ok"]
    for i, (backup_id, expected) in enumerate(points):
        out = tmp_path / f"r{i}.img"
        result = cli("restore", "-r", repo, *ep, backup_id, out)
        assert result.code == 0, result.err
        assert out.read_bytes() == expected


def test_endpoint_from_the_environment(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CBTBACKUP_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("CBTBACKUP_REPO", f"s3://{bucket}")
    image = make_image(2 * MiB)
    assert cli("init").code == 0
    assert cli("full", image).code == 0
    assert cli("restore", "latest", tmp_path / "out").code == 0
    assert (tmp_path / "out").read_bytes() == image.read_bytes()


def test_init_refuses_a_prefix_that_holds_something_else(
    cli: RunCli, bucket: str, s3_endpoint: str
) -> None:
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key="photos/cat.jpg", Body=b"meow")
    cli("init", "-r", f"s3://{bucket}/photos", "--endpoint-url", s3_endpoint).assert_one_line_error(2, "not empty")
    assert cli("init", "-r", f"s3://{bucket}/backups", "--endpoint-url", s3_endpoint).code == 0
    cli("init", "-r", f"s3://{bucket}/backups", "--endpoint-url", s3_endpoint).assert_one_line_error(
        2, "repository already")


def test_missing_bucket_wrong_credentials_unreachable_endpoint(
    cli: RunCli, bucket: str, s3_endpoint: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("init", "-r", "s3://no-such-bucket-here/x", "--endpoint-url", s3_endpoint).assert_one_line_error(
        3, "bucket 'no-such-bucket-here' does not exist")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    # moto checks keys only when asked to; RGW always does.
    with enable_iam_authentication() if s3_server.name == "moto" else contextlib.nullcontext():
        result = cli("init", "-r", f"s3://{bucket}/x", "--endpoint-url", s3_endpoint)
    result.assert_one_line_error(7, "access denied", "check the credentials")
    assert "not-the-secret" not in result.err
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    dead = f"http://127.0.0.1:{free_port()}"
    cli("list", "-r", f"s3://{bucket}/x", "--endpoint-url", dead).assert_one_line_error(7, "cannot reach")


def test_flaky_endpoint_still_backs_up_and_restores_exactly(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    repo = f"s3://{bucket}/flaky"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "256KiB").code == 0
    image = make_image(8 * MiB)
    cli("track", image)
    proxy.set_policy(FaultPolicy(fail_rate=0.15, slow_seconds=0.2, seed=11))
    full = cli("full", "-r", repo, *ep, image, "--json")
    assert full.code == 0, full.err
    scribble(image, random.Random(5))
    inc = cli("incr", "-r", repo, *ep, image, "--json")
    assert inc.code == 0, inc.err
    out = tmp_path / "out.img"
    assert cli("restore", "-r", repo, *ep, "latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()
    assert cli("verify", "-r", repo, *ep).code == 0
    assert set(proxy.faults) == {"500", "503", "reset", "slow"}  # every kind of fault happened
    assert sum(proxy.faults.values()) >= 20


def test_permanent_failure_then_resume(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, proxy: FaultProxy
) -> None:
    repo = f"s3://{bucket}/perm"
    ep = ("--endpoint-url", proxy.url)
    assert cli("init", "-r", repo, *ep, "--chunk-size", "256KiB").code == 0
    small = make_image(MiB)
    earlier = cli("full", "-r", repo, *ep, small, "--json").json["id"]
    big = make_image(8 * MiB)  # 32 chunks
    proxy.reset_counts()
    proxy.set_policy(FaultPolicy(deny_puts_after=11))  # the lock, then ten chunks
    failed = cli("full", "-r", repo, *ep, big)
    failed.assert_one_line_error(7, "access denied")
    stored_before = sum(1 for p in proxy.put_paths if "/chunks/" in p)
    assert stored_before == 10

    proxy.set_policy(FaultPolicy())
    assert [b["id"] for b in cli("list", "-r", repo, *ep, "--json").json["backups"]] == [earlier]
    assert cli("verify", "-r", repo, *ep).code == 0
    proxy.reset_counts()
    rerun = cli("full", "-r", repo, *ep, big, "--json")
    assert rerun.code == 0, rerun.err
    chunk_puts = [p for p in proxy.put_paths if "/chunks/" in p]
    assert len(chunk_puts) == 32 - stored_before  # nothing uploaded twice
    assert rerun.json["chunks_reused"] == stored_before
    out = tmp_path / "big.out"
    assert cli("restore", "-r", repo, *ep, f"{rerun.json['name']}@latest", out).code == 0
    assert out.read_bytes() == big.read_bytes()


def test_init_reports_whether_the_server_honours_conditional_writes(
    cli: RunCli, bucket: str, proxy: FaultProxy, s3_server: S3Server
) -> None:
    honoured = cli("init", "-r", f"s3://{bucket}/a", "--endpoint-url", proxy.url, "--json")
    assert honoured.code == 0 and honoured.json["conditional_writes"] is True, honoured.err
    if s3_server.name == "rgw":
        return  # RGW checks signatures, and If-None-Match is signed: only moto lets the proxy drop it
    proxy.set_policy(FaultPolicy(ignore_conditional_writes=True))
    ignored = cli("init", "-r", f"s3://{bucket}/b", "--endpoint-url", proxy.url, "--json")
    assert ignored.code == 0 and ignored.json["conditional_writes"] is False
    assert "ignores conditional writes" in ignored.err
    assert list(s3_client(proxy.url).list_objects_v2(Bucket=bucket, Prefix="b/probe/").get("Contents", [])) == []


def test_storage_class_goes_on_chunks_only(
    cli: RunCli, make_image: MakeImage, bucket: str, s3_endpoint: str, s3_server: S3Server
) -> None:
    # RGW offers only STANDARD unless its zone is given more placement classes; moto knows AWS's classes.
    chosen = "STANDARD_IA" if s3_server.name == "moto" else "STANDARD"
    repo = ("-r", f"s3://{bucket}/classy", "--endpoint-url", s3_endpoint)
    assert cli("init", *repo, "--storage-class", chosen).code == 0
    assert cli("full", *repo, "--storage-class", chosen, make_image(MiB)).code == 0
    client = s3_client(s3_endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="classy/")["Contents"]
    classes: dict[str, set[str]] = {o["Key"].split("/")[1]: set() for o in listed}
    for o in listed:
        classes[o["Key"].split("/")[1]].add(client.head_object(Bucket=bucket, Key=o["Key"]).get("StorageClass",
                                                                                                "STANDARD"))
    assert classes.pop("chunks") == {chosen}
    assert all(found == {"STANDARD"} for found in classes.values()), classes
    if s3_server.name == "rgw":
        cli("full", *repo, "--storage-class", "NO_SUCH_CLASS", make_image(MiB)).assert_one_line_error(
            2, "does not offer storage class 'NO_SUCH_CLASS'")
    cli("full", *repo, "--storage-class", "DEEP_ARCHIVE", make_image(MiB)).assert_one_line_error(
        2, "restore request", "--allow-archive-class")


def test_storage_class_is_refused_for_a_directory(cli: RunCli, tmp_path: Path) -> None:
    cli("init", "-r", tmp_path / "r", "--storage-class", "STANDARD_IA").assert_one_line_error(2, "S3 repositories only")
    assert not (tmp_path / "r").exists()


def test_a_clock_far_off_the_servers_is_one_line_and_not_retried(
    cli: RunCli, make_image: MakeImage, rgw_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RGW refuses requests signed more than 15 minutes off its clock (moto checks no clock): botocore signs
    with its own clock, so shifting that clock is a host whose time is wrong."""
    bucket = f"cbt-{uuid.uuid4().hex[:12]}"
    s3_client(rgw_endpoint).create_bucket(Bucket=bucket)
    proxy = FaultProxy(rgw_endpoint)
    try:
        repo, ep = f"s3://{bucket}/skew", ("--endpoint-url", proxy.url)
        assert cli("init", "-r", repo, *ep, "--encryption", "none").code == 0
        image = make_image(MiB)
        full = cli("full", "-r", repo, *ep, image, "--provider", "scan", "--json")
        assert full.code == 0, full.err
        before = {o["Key"]: o["ETag"] for o in s3_client(rgw_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}

        real_now = botocore.auth.get_current_datetime
        monkeypatch.setattr(botocore.auth, "get_current_datetime",
                            lambda remove_tzinfo=True: real_now(remove_tzinfo) + datetime.timedelta(hours=2))
        for args in (("list",), ("incr", image, "--provider", "scan")):
            proxy.reset_counts()
            result = cli(*args, "-r", repo, *ep, "--json")
            result.assert_one_line_error(7, "clock is too far off the S3 server's")
            assert result.json["error"].startswith("this host's clock")
            # botocore's standard mode tries a skewed request again once; nothing beyond that.
            assert sum(proxy.counts.values()) <= 2
        monkeypatch.setattr(botocore.auth, "get_current_datetime", real_now)
        after = {o["Key"]: o["ETag"] for o in s3_client(rgw_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
        assert after == before  # the refused incremental left nothing behind
        assert [b["id"] for b in cli("list", "-r", repo, *ep, "--json").json["backups"]] == [full.json["id"]]
    finally:
        proxy.close()


def test_an_endpoint_that_never_answers_is_one_line_after_the_timeouts(
    cli: RunCli, bucket: str, tmp_path: Path
) -> None:
    """A server that accepts connections and then says nothing (stopped, wedged) must not hold a timer's
    job: four tries of --s3-timeout each, then one line and exit 7."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel accepts connections; nobody ever reads or answers them
    try:
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = cli("list", "-r", f"s3://{bucket}/x", "--endpoint-url", endpoint, "--s3-timeout", "0.5", "--json")
        waited = time.monotonic() - started
    finally:
        silent.close()
    result.assert_one_line_error(7, "did not answer", "within 0.5 s (4 tries)")
    assert 4 * 0.5 <= waited < 20  # the tries were made, and then it stopped
    bad = cli("list", "-r", f"s3://{bucket}/x", "--s3-timeout", "0")
    assert bad.code == 2 and "--s3-timeout" in bad.err

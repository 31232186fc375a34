"""The S3 store's own behaviour under moto's in-process mock: prefixes, multipart, error translation."""

from __future__ import annotations

import os
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from cbtbackup.errors import NotFoundError, StorageError, UsageError
from cbtbackup.repo import s3_store
from cbtbackup.repo.s3_store import S3Store, parse_s3_url


@pytest.fixture
def mocked() -> Iterator[None]:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
        yield


def test_parse_urls() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(UsageError):
        parse_s3_url("s3:///x")


def test_keys_live_under_the_prefix(mocked: None) -> None:
    store = S3Store("s3://bkt/team/repo1")
    store.put("config", b"x")
    keys = [o["Key"] for o in boto3.client("s3", region_name="us-east-1").list_objects_v2(Bucket="bkt")["Contents"]]
    assert keys == ["team/repo1/config"]
    assert [o.key for o in store.list("")] == ["config"]
    assert [o.key for o in S3Store("s3://bkt/team").list("")] == ["repo1/config"]


def test_large_objects_go_multipart(mocked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_store, "MULTIPART_THRESHOLD", 5 << 20)
    store = S3Store("s3://bkt/p")
    data = os.urandom(12 << 20)
    store.put("big", data)
    head = boto3.client("s3", region_name="us-east-1").head_object(Bucket="bkt", Key="p/big")
    assert "-" in head["ETag"]  # a multipart ETag: "<md5>-<parts>"
    assert store.get("big") == data
    assert store.get("big", offset=(5 << 20) - 3, length=6) == data[(5 << 20) - 3:(5 << 20) + 3]


def test_missing_bucket_and_key(mocked: None) -> None:
    store = S3Store("s3://no-such-bucket/p")
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist"):
        store.get("config")
    with pytest.raises(NotFoundError, match="no such object"):
        S3Store("s3://bkt/p").get("nothing")


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("s3://bkt/p", s3_store.S3Options(endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StorageError, match="no AWS credentials"):
        store.get("config")

"""Real S3 endpoints on loopback (moto's threaded server and Ceph's RADOS Gateway, each test run on both),
a fault proxy in front of them, fresh buckets."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.s3.fault_proxy import FaultPolicy, FaultProxy
from tests.servers.s3_servers import S3Server, free_port

__all__ = ["free_port", "s3_client"]


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials only, never a real profile; a private manifest cache per test."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("CBTBACKUP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def s3_endpoint(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The endpoint of this test's server, with its credentials in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return s3_server.endpoint


@pytest.fixture
def rgw_endpoint(rgw_server: S3Server | str, monkeypatch: pytest.MonkeyPatch) -> str:
    """RGW alone, for what only a real server does (Object Lock, bucket policies, clock checks); the test
    skips only where Ceph cannot start."""
    if isinstance(rgw_server, str):
        pytest.skip(rgw_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw_server.secret_key)
    return rgw_server.endpoint


def s3_client(endpoint: str) -> Any:
    """A boto3 client with the credentials now in the environment (the test's server's)."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"cbt-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_endpoint)
    p.set_policy(FaultPolicy())
    yield p
    p.close()

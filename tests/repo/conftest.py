"""Every store backend and wrapper the tests can run here, for the conformance suite: local (bare, retrying,
rate-limited), S3 under moto (in-process)
and S3 on Ceph's RADOS Gateway (a real server, tests/servers/ceph-cluster)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.rate_limited_store import RateLimitedStore
from cbtbackup.repo.retrying_store import RetryingStore
from cbtbackup.repo.s3_store import S3Options, S3Store
from cbtbackup.repo.store import Store
from tests.servers.s3_servers import S3Server


@pytest.fixture(params=["local", "s3-moto", "s3-rgw", "retrying-local", "rate-limited-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    if request.param in ("local", "retrying-local", "rate-limited-local"):
        (tmp_path / "store").mkdir()
        s: Store = LocalStore(tmp_path / "store")
        if request.param == "retrying-local":
            s = RetryingStore(s, base_delay=0.001)
        if request.param == "rate-limited-local":
            s = RateLimitedStore(s, upload=200 << 20, download=200 << 20)
        yield s
        s.close()
        return
    if request.param == "s3-rgw":
        server: S3Server | str = request.getfixturevalue("rgw_server")
        if isinstance(server, str):
            pytest.skip(server)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        name = f"conformance-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        s = S3Store(f"s3://{name}/some/prefix", S3Options(endpoint_url=server.endpoint))
        yield s
        s.close()
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="conformance")
        s = S3Store("s3://conformance/some/prefix")
        yield s
        s.close()

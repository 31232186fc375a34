"""Write-only host keys on S3 (moto and the RADOS Gateway): the story of tests/cli/test_write_only.py over
HTTP, where the bucket is where other hosts' backups and this host's record of its own differ most."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.write_only_stories import write_only_story
from tests.conftest import MakeImage, RunCli
from tests.s3.test_s3_encryption import BucketObjects


def test_a_write_only_host_backs_up_into_a_bucket_and_reads_nothing(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = ("-r", f"s3://{bucket}/fleet", "--endpoint-url", s3_endpoint)
    objects = BucketObjects(s3_endpoint, bucket, "fleet/")
    write_only_story(cli, repo, make_image, tmp_path, objects.snapshot, monkeypatch)
    # Nothing the host keeps of its own backups went into the bucket.
    assert not [k for k in objects.keys("") if "state" in k]

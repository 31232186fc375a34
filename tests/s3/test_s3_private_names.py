"""Private metadata on S3 (moto and the RADOS Gateway): no chain name, host, path, backup time or image size
in any key of the bucket or in any object's bytes (the story of tests/cli/test_private_names.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.private_names_stories import private_metadata_story
from tests.conftest import MakeImage, RunCli
from tests.s3.test_s3_encryption import BucketObjects


def test_a_bucket_shows_no_chain_host_path_time_or_size(
    cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str, s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = ("-r", f"s3://{bucket}/fleet", "--endpoint-url", s3_endpoint)
    objects = BucketObjects(s3_endpoint, bucket, "fleet/")
    assert private_metadata_story(cli, repo, make_image, tmp_path, objects.snapshot, monkeypatch) == []

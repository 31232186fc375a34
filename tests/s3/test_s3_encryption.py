"""Encrypted repositories on moto's S3 server: the tamper table, and no marker in the bucket or the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cbtbackup.engine import TrackedVolume
from tests.cli.encryption_stories import MARKER, marker_image, no_marker_under, tamper_story
from tests.conftest import MakeImage, RunCli
from tests.s3.conftest import s3_client

MiB = 1 << 20


class BucketObjects:
    def __init__(self, endpoint: str, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = s3_client(endpoint), bucket, prefix

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        return sorted(o["Key"][len(self.prefix):] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def snapshot(self) -> dict[str, bytes]:
        return {k: self.get(k) for k in self.keys("")}

    def restore(self, saved: Any) -> None:
        for key in self.keys(""):
            if key not in saved:
                self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        for key, data in saved.items():
            self.put(key, data)


def test_tampering_is_detected_over_s3(cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str,
                                       s3_endpoint: str) -> None:
    repo = ("-r", f"s3://{bucket}/sealed", "--endpoint-url", s3_endpoint)
    tamper_story(cli, repo, make_image, tmp_path, BucketObjects(s3_endpoint, bucket, "sealed/"))


def test_nothing_in_the_clear_in_the_bucket_or_the_cache(cli: RunCli, tmp_path: Path, bucket: str,
                                                          s3_endpoint: str) -> None:
    repo = ("-r", f"s3://{bucket}/secret", "--endpoint-url", s3_endpoint)
    image = marker_image(tmp_path / "marker.img")
    assert cli("init", *repo).code == 0
    cli("track", image)
    assert cli("full", *repo, image).code == 0
    with TrackedVolume.open(image) as vol:
        vol.write(MiB, MARKER * 100)
    assert cli("incr", *repo, image).code == 0
    assert cli("list", *repo).code == 0
    objects = BucketObjects(s3_endpoint, bucket, "secret/")
    for key in objects.keys(""):
        assert MARKER not in key.encode() and MARKER not in objects.get(key), key
    cache = tmp_path / "cache"
    assert any(p.is_file() for p in cache.rglob("*")), "the manifest cache was used"
    no_marker_under(cache)

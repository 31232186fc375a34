"""Four backup processes and a `forget --prune` racing on one bucket (tests/s3/concurrency_story.py)."""

from __future__ import annotations

from pathlib import Path

from tests.s3.concurrency_story import CHAINS, KEEP, run_story


def test_four_writers_and_a_pruner_on_one_bucket(bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    result = run_story(f"s3://{bucket}/fleet", s3_endpoint, tmp_path, rounds=2, image_size=2 << 20)
    assert result.failures == []
    assert result.backups_made == 2 * CHAINS
    assert result.forks == 0
    assert result.verify_ok
    assert result.backups_kept == CHAINS * min(2, KEEP)
    assert result.restored_exact == result.backups_kept and result.restore_mismatches == []

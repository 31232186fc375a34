"""restore --force onto an attached image, or onto its loop device, is refused: nothing is written."""

from __future__ import annotations

from pathlib import Path

from tests.attach.conftest import Attached
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def test_an_attached_image_and_its_loop_device_are_refused(
    cli: RunCli, make_image: MakeImage, attached_image: Attached, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    backup_id = cli("full", "-r", repo, make_image(96 * MiB), "--provider", "scan", "--json").json["id"]
    record = attached_image.attach()
    before = attached_image.image.read_bytes()
    cli("restore", "-r", repo, backup_id, attached_image.image, "--force").assert_one_line_error(4, "attached")
    cli("restore", "-r", repo, backup_id, record.loop, "--force").assert_one_line_error(4, "attached")
    assert attached_image.image.read_bytes() == before

"""mount and serve on a repository in S3 (moto's server over HTTP)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.access.conftest import Started, foreground, mounted, need, socket_ready, stop
from tests.conftest import MakeImage, RunCli

__all__ = ["foreground"]  # the fixture, shared with tests/access
MiB = 1 << 20


def test_mount_and_serve_from_s3(cli: RunCli, make_image: MakeImage, tmp_path: Path, bucket: str,
                                 moto_endpoint: str, foreground: Started) -> None:
    repo = ("-r", f"s3://{bucket}/access", "--endpoint-url", moto_endpoint)
    image = make_image(12 * MiB)
    assert cli("init", *repo).code == 0
    backup = cli("full", *repo, image, "--json").json
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = foreground("mount", *repo, mnt, ready=mounted(mnt))
    assert (mnt / backup["name"] / f"{backup['id']}.img").read_bytes() == image.read_bytes()
    assert stop(mount)[0] == 0
    need("qemu-img", "qemu-utils")
    sock = tmp_path / "nbd.sock"
    served = foreground("serve", *repo, backup["id"], "--listen", f"unix:{sock}", ready=socket_ready(sock))
    compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", f"nbd+unix:///?socket={sock}",
                               str(image)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert stop(served)[0] == 0

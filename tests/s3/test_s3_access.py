"""mount and serve on a repository in S3 (moto's server over HTTP)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.access.conftest import Started, foreground, mounted, need, socket_ready, stop
from tests.access.test_mount import LoopMount, loops, partitioned_image
from tests.attach.conftest import checksums
from tests.conftest import RunCli

__all__ = ["foreground", "loops"]  # fixtures shared with tests/access
MiB = 1 << 20


def test_mount_and_serve_from_s3(cli: RunCli, tmp_path: Path, bucket: str, s3_endpoint: str,
                                 foreground: Started, loops: list[LoopMount]) -> None:
    repo = ("-r", f"s3://{bucket}/access", "--endpoint-url", s3_endpoint)
    image = tmp_path / "disk.img"
    expected = partitioned_image(image, 64 * MiB, ["mkfs.ext4", "-q", "-F"], tmp_path / "fill")
    assert cli("init", *repo).code == 0
    backup = cli("full", *repo, image, "--json").json
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = foreground("mount", *repo, mnt, ready=mounted(mnt))
    loops.append(LoopMount(mnt / backup["name"] / "latest.img", tmp_path / "files", read_only=True))
    assert checksums(tmp_path / "files") == expected  # the files, read through S3
    loops.pop().close()
    assert stop(mount)[0] == 0
    need("qemu-img", "qemu-utils")
    sock = tmp_path / "nbd.sock"
    served = foreground("serve", *repo, backup["id"], "--listen", f"unix:{sock}", ready=socket_ready(sock))
    compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", f"nbd+unix:///?socket={sock}",
                               str(image)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert stop(served)[0] == 0

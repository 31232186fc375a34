"""``cbtbackup serve``: a backup over NBD, read by the real qemu-img."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import blake3

from cbtbackup.engine import TrackedVolume
from tests.access.conftest import Started, need, socket_ready, stop
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)


def test_qemu_img_reads_a_full_and_an_incremental(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                                  foreground: Started) -> None:
    need("qemu-img", "qemu-utils")
    repo, image = tmp_path / "repo", make_image(40 * MiB)  # past 32 MiB: block status asks for more than a read
    with open(image, "r+b") as f:  # a zero range, reported as a hole by block status
        f.seek(8 * MiB)
        f.write(bytes(8 * MiB))
    cli("init", "-r", repo)
    cli("track", image)
    full = cli("full", "-r", repo, image, "--json").json["id"]
    full_copy = tmp_path / "full.img"
    full_copy.write_bytes(image.read_bytes())
    with TrackedVolume.open(image) as vol:
        vol.write(MiB + 17, os.urandom(3 * MiB))
    incr = cli("incr", "-r", repo, image, "--json").json["id"]
    for backup_id, original in ((full, full_copy), (incr, image)):
        sock = tmp_path / f"{backup_id}.sock"
        server = foreground("serve", "-r", repo, backup_id, "--listen", f"unix:{sock}", ready=socket_ready(sock))
        url = f"nbd+unix:///?socket={sock}"
        compared = qemu_img("compare", "-f", "raw", "-F", "raw", url, str(original))
        assert compared.returncode == 0 and "identical" in compared.stdout, compared.stdout + compared.stderr
        converted = tmp_path / "converted.img"
        assert qemu_img("convert", "-f", "raw", "-O", "raw", url, str(converted)).returncode == 0
        assert converted.read_bytes() == original.read_bytes()
        converted.unlink()
        extents = json.loads(qemu_img("map", "--output=json", "-f", "raw", url).stdout)
        zeros = [e for e in extents if e["zero"] and not e["data"]]
        assert any(e["start"] <= 8 * MiB and e["start"] + e["length"] >= 16 * MiB for e in zeros), extents
        code, out, _ = stop(server)
        assert code == 0 and f"stopped serving {backup_id}" in out
        assert not sock.exists()


def test_a_corrupt_chunk_is_an_io_error_not_data(cli: RunCli, make_image: MakeImage, tmp_path: Path,
                                                 foreground: Started) -> None:
    need("qemu-img", "qemu-utils")
    repo, image = tmp_path / "repo", make_image(4 * MiB)
    cli("init", "-r", repo, "--encryption", "none")
    backup_id = cli("full", "-r", repo, image, "--json").json["id"]
    victim = next((repo / "chunks").rglob(blake3.blake3(image.read_bytes()[2 * MiB:3 * MiB]).hexdigest()))
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 1
    victim.write_bytes(bytes(raw))
    sock = tmp_path / "s.sock"
    server = foreground("serve", "-r", repo, backup_id, "--listen", f"unix:{sock}", ready=socket_ready(sock))
    converted = qemu_img("convert", "-f", "raw", "-O", "raw", f"nbd+unix:///?socket={sock}",
                         str(tmp_path / "out.img"))
    assert converted.returncode != 0 and "Input/output error" in converted.stderr, converted.stderr
    _, _, err = stop(server)
    assert victim.name in err  # the log names the chunk


def test_serve_refuses_bad_addresses(cli: RunCli, make_image: MakeImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli("init", "-r", repo)
    backup_id = cli("full", "-r", repo, make_image(MiB), "--json").json["id"]
    cli("serve", "-r", repo, backup_id, "--listen", "udp:1").assert_one_line_error(2, "unix:PATH")
    taken = tmp_path / "taken"
    taken.write_text("")
    cli("serve", "-r", repo, backup_id, "--listen", f"unix:{taken}").assert_one_line_error(2, "exists")

"""A repository and a mount point named relative to the directory the user is in, as ``mount`` and ``serve``
are run from a shell; and the names a mount shows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.access.conftest import Started, mounted, need, socket_ready, stop
from tests.conftest import RunCli

MiB = 1 << 20


def backups_in_one_second(cli: RunCli, tmp_path: Path, source: Path) -> list[tuple[str, bytes]]:
    """Fulls of ``source`` (changed each time) until two were taken within one second: (id, content) each."""
    taken: list[tuple[str, bytes]] = []
    for i in range(40):
        source.write_bytes(os.urandom(MiB) + bytes([i]) * MiB)
        result = cli("full", "-r", tmp_path / "repo", source, "--json")
        assert result.code == 0, result.err
        taken.append((str(result.json["id"]), source.read_bytes()))
        if len(taken) >= 2:
            names = cli("list", "-r", tmp_path / "repo", "--json").json["backups"]
            seconds = [b["stamp"][:15] for b in names]
            if len(set(seconds)) < len(seconds):
                return taken
    raise AssertionError("40 backups and never two in one second")


def test_mount_with_a_relative_repository_and_mount_point(cli: RunCli, tmp_path: Path, foreground: Started) -> None:
    assert cli("init", "-r", tmp_path / "repo", "--encryption", "none").code == 0
    taken = backups_in_one_second(cli, tmp_path, tmp_path / "disk.img")
    (tmp_path / "mnt").mkdir()
    proc = foreground("mount", "-r", "repo", "mnt", ready=mounted(tmp_path / "mnt"), cwd=tmp_path)
    chains = os.listdir(tmp_path / "mnt")
    assert len(chains) == 1
    tree = tmp_path / "mnt" / chains[0]
    for backup_id, content in taken:
        assert (tree / f"{backup_id}.img").read_bytes() == content
    links = sorted(n for n in os.listdir(tree) if n[0].isdigit() and n.endswith("Z.img"))
    assert len(links) == len(taken), links  # a time link for every backup, also two in one second
    assert {os.readlink(tree / n) for n in links} == {f"{i}.img" for i, _ in taken}
    code, _, err = stop(proc)
    assert code == 0, err
    assert "Ignoring invalid max threads" not in err and "missing from" not in err, err


def test_serve_with_a_relative_repository(cli: RunCli, tmp_path: Path, foreground: Started) -> None:
    need("qemu-img", "qemu-utils")
    assert cli("init", "-r", tmp_path / "repo", "--encryption", "none").code == 0
    (tmp_path / "disk.img").write_bytes(os.urandom(2 * MiB))
    backup_id = cli("full", "-r", tmp_path / "repo", tmp_path / "disk.img", "--json").json["id"]
    server = foreground("serve", "-r", "repo", backup_id, "--listen", "unix:nbd.sock",
                        ready=socket_ready(tmp_path / "nbd.sock"), cwd=tmp_path)
    compared = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                               f"nbd+unix:///?socket={tmp_path / 'nbd.sock'}", str(tmp_path / "disk.img")],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0 and "identical" in compared.stdout, compared.stdout + compared.stderr
    code, _, err = stop(server)
    assert code == 0, err

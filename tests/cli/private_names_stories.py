"""Private metadata, told through the command line, on any repository (local here, S3 in tests/s3).

A host whose name carries a marker backs up a source whose path carries another into a chain whose name
carries a third, by full and incremental, with a passphrase, a second key slot and a write-only key. Then
every object of the repository is read as the store holds it: no marker, no backup time and no image size is
in any object's name or in its bytes. The same story with ``--plain-names`` finds them all in object names,
so the check is one that can fail."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cbtbackup.engine import TrackedVolume
from tests.cli.write_only_stories import make_write_only_key
from tests.conftest import MakeImage, RunCli

MiB = 1 << 20
HOST = "zq7hostmark"
PATH = "zq7pathmark"
CHAIN = "zq7chainmark"
SIZE = 5 * MiB + 12288  # an odd size, to look for in the repository's bytes
Snapshot = Callable[[], dict[str, bytes]]  # every object of the repository as the store holds it, by key


def as_host(*args: object) -> subprocess.CompletedProcess[str]:
    """Run cbtbackup in a UTS namespace of its own whose host name is ``HOST`` (as root, as here)."""
    command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', HOST, sys.executable, "-m",
               "cbtbackup", *(os.fspath(a) if isinstance(a, Path) else str(a) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def private_metadata_story(cli: RunCli, repo: tuple[str, ...], make_image: MakeImage, tmp_path: Path,
                           snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch, plain: bool = False) -> list[str]:
    """Tell the story; what of the markers, times and sizes the repository shows (each as 'what in where')."""
    as_host("init", *repo, *(("--plain-names",) if plain else ()))
    source_dir = tmp_path / PATH
    source_dir.mkdir()
    image = source_dir / "disk.img"
    image.write_bytes(make_image(SIZE).read_bytes())
    assert cli("track", image).code == 0
    as_host("full", *repo, image)  # the default chain name: from the path (and the host)
    as_host("full", *repo, image, "--name", CHAIN)
    with TrackedVolume.open(image) as vol:
        vol.write(2 * MiB + 4096, os.urandom(50_000))
    as_host("incr", *repo, image, "--name", CHAIN)
    second = tmp_path / "second.pass"
    second.write_text("second passphrase\n")
    as_host("key", "add", *repo, "--new-password-file", second)
    # A write-only host backs up a chain of its own.
    key = make_write_only_key(cli, repo, tmp_path)
    with monkeypatch.context() as m:
        m.delenv("CBTBACKUP_PASSWORD")
        assert cli("full", *repo, "--key-file", key, image, "--name", f"{CHAIN}-wo").code == 0

    listed = cli("list", *repo, "--long", "--json")
    assert listed.code == 0, listed.err
    backups = listed.json["backups"]
    assert len(backups) == 4 and {b["name"] for b in backups} >= {CHAIN, f"{CHAIN}-wo"}
    assert any(PATH in b["name"] for b in backups)  # the default name shows its source, to a key holder
    out = tmp_path / "out.img"
    assert cli("restore", *repo, f"{CHAIN}@latest", out).code == 0
    assert out.read_bytes() == image.read_bytes()
    assert cli("verify", *repo).code == 0

    stamps = {b["stamp"][:15] for b in backups}  # to the second: 20261207T181500
    looked_for = {HOST: HOST, PATH: PATH, CHAIN: CHAIN, "image size": str(SIZE),
                  **{f"time {s}": s for s in stamps}}
    shown = []
    for key_name, data in snapshot().items():
        for what, text in looked_for.items():
            if text in key_name:
                shown.append(f"{what} in the name {key_name}")
            if text.encode() in data or text.encode().hex().encode() in data:
                shown.append(f"{what} in the bytes of {key_name}")
    return shown

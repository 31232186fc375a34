"""Consistency groups of the userspace engine: two volumes taken at one instant.

The story is a database's: a writer appends record n to disk A and, once that write is acknowledged,
record n to disk B ("A's write n is done"). Backups of both disks run again and again while it writes. In
no group backup may B hold a record whose write to A is missing from A's backup."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attach.conftest import Attached
from tests.conftest import RunCli

MiB = 1 << 20
RECORD = 4096
SIZE = 32 * MiB
SLOTS = SIZE // RECORD
MAGIC = b"CBTPAIR!"

WRITER = textwrap.dedent(f"""\
    import os, struct, sys
    a = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
    b = os.open(sys.argv[2], os.O_WRONLY | os.O_DIRECT)
    buf = __import__("mmap").mmap(-1, {RECORD})  # page-aligned, as O_DIRECT needs
    n = 1
    while True:
        for fd in (a, b):  # A's record first; B's only once A's write returned
            buf.seek(0)
            buf.write({MAGIC!r} + struct.pack("<Q", n) * 8)
            os.pwrite(fd, buf, (n % {SLOTS}) * {RECORD})
        n += 1
    """)


def records(image: bytes) -> dict[int, int]:
    """Slot -> the sequence number of the record in it (slots never written are absent)."""
    out = {}
    for slot in range(SLOTS):
        rec = image[slot * RECORD: slot * RECORD + len(MAGIC) + 8]
        if rec.startswith(MAGIC):
            out[slot] = struct.unpack("<Q", rec[len(MAGIC):])[0]
    return out


@pytest.fixture
def two_volumes(cli: RunCli, tmp_path: Path) -> Iterator[tuple[Attached, Attached]]:
    handles = []
    for name in ("data", "log"):
        image = tmp_path / f"{name}.img"
        with open(image, "wb") as f:
            f.truncate(SIZE)
        assert cli("track", image).code == 0
        mountdir = tmp_path / f"{name}-served"
        mountdir.mkdir()
        handles.append(Attached(cli, image, mountdir))
    yield handles[0], handles[1]
    for handle in handles:
        handle.cleanup()


def test_ordered_writes_across_two_disks_are_never_torn_apart(
    cli: RunCli, two_volumes: tuple[Attached, Attached], tmp_path: Path
) -> None:
    a, b = two_volumes
    a.attach()
    b.attach()
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(script), a.loop, b.loop])
    taken: list[tuple[str, str]] = []
    try:
        time.sleep(0.3)
        for round_no in range(8):
            result = cli("full" if round_no == 0 else "incr", "-r", repo, a.loop, b.loop, "--json",
                         "--verify-unchanged", "0")
            assert result.code == 0, result.err
            first, second = result.json["backups"]
            assert first["method"] in ("full", "cbt") and second["method"] in ("full", "cbt"), result.err
            taken.append((first["id"], second["id"]))
            time.sleep(0.1)
        assert writer.poll() is None, "the writer stopped"
    finally:
        writer.kill()
        writer.wait()
    progressed = []
    for i, (id_a, id_b) in enumerate(taken):
        out_a, out_b = tmp_path / "a.img", tmp_path / "b.img"
        assert cli("restore", "-r", repo, id_a, out_a, "--force").code == 0
        assert cli("restore", "-r", repo, id_b, out_b, "--force").code == 0
        in_a, in_b = records(out_a.read_bytes()), records(out_b.read_bytes())
        torn = [(slot, n) for slot, n in in_b.items() if in_a.get(slot, 0) < n]
        assert not torn, f"backup {i}: B holds records whose A write is missing: {torn[:5]}"
        progressed.append(max(in_b.values(), default=0))
    # Not vacuous: the writer was writing between the takes, so the backups hold ever later records.
    assert progressed[-1] > progressed[0] > 0 and len(set(progressed)) >= 4, progressed


def test_a_group_of_tracked_images_opened_here(cli: RunCli, make_image: object, tmp_path: Path) -> None:
    images = []
    for name in ("one.img", "two.img"):
        image = tmp_path / name
        image.write_bytes(os.urandom(4 * MiB))
        assert cli("track", image).code == 0
        images.append(image)
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    full = cli("full", "-r", repo, *images, "--json")
    assert full.code == 0, full.err
    assert [b["provider"] for b in full.json["backups"]] == ["userspace", "userspace"]
    from cbtbackup.engine import TrackedVolume
    with TrackedVolume.open(images[1]) as vol:
        vol.write(MiB, os.urandom(65536))
    incr = cli("incr", "-r", repo, *images, "--json", "--verify-unchanged", "0")
    assert incr.code == 0, incr.err
    one, two = incr.json["backups"]
    assert (one["method"], one["bytes_scanned"], two["method"], two["bytes_scanned"]) == ("cbt", 0, "cbt", 65536)
    for backup, image in zip(incr.json["backups"], images, strict=True):
        out = tmp_path / f"restored-{image.name}"
        assert cli("restore", "-r", repo, backup["id"], out).code == 0
        assert out.read_bytes() == image.read_bytes()


def test_a_group_across_providers_is_refused_and_holds_nothing(
    cli: RunCli, two_volumes: tuple[Attached, Attached], tmp_path: Path
) -> None:
    a, _ = two_volumes
    a.attach()
    plain = tmp_path / "plain.img"
    plain.write_bytes(os.urandom(MiB))
    repo = tmp_path / "repo"
    assert cli("init", "-r", repo, "--encryption", "none").code == 0
    cli("full", "-r", repo, a.loop, plain).assert_one_line_error(2, "must share a provider", "(attached volume)",
                                                                 f"{plain} (scan provider)")
    cli("full", "-r", repo, a.loop, a.loop).assert_one_line_error(2, "named twice")
    cli("full", "-r", repo, a.loop, a.image, "--freeze", "/").assert_one_line_error(2)
    assert cli("list", "-r", repo, "--json").json["backups"] == []
    # Nothing is left held: the volume takes writes at once.
    started = time.monotonic()
    with open(a.loop, "r+b", buffering=0) as f:
        f.write(b"x" * 4096)
        os.fsync(f.fileno())
    assert time.monotonic() - started < 5

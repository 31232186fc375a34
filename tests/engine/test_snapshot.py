"""Snapshots: multi-volume takes, lifetimes, concurrent writers and readers."""

from __future__ import annotations

import os
import random
import threading

import pytest

from cbtbackup.engine import Snapshot, TrackedVolume
from cbtbackup.engine.errors import SnapshotBusyError, SnapshotStateError
from cbtbackup.errors import UsageError
from tests.conftest import MakeImage

CHUNK = 256 << 10


def test_each_chunk_is_copied_once(make_image: MakeImage) -> None:
    img = make_image(8 * CHUNK)
    original = img.read_bytes()
    with TrackedVolume.track(img) as vol, Snapshot.create([vol]) as snap:
        snap.take()
        for _ in range(5):
            vol.write(CHUNK + 10, os.urandom(CHUNK))  # chunks 1 and 2, again and again
        assert snap.copied_chunks(vol) == 2
        assert snap.storage.used == 2 * CHUNK
        assert snap.image(vol).read(0, vol.size) == original


def test_short_last_chunk(make_image: MakeImage) -> None:
    img = make_image(2 * CHUNK + 777)
    original = img.read_bytes()
    with TrackedVolume.track(img) as vol, Snapshot.create([vol]) as snap:
        snap.take()
        vol.write(vol.size - 5, b"12345")
        assert snap.image(vol).read(0, vol.size) == original
        assert snap.storage.used == 777


def test_two_volumes_switch_at_one_instant(make_image: MakeImage) -> None:
    a, b = make_image(4 * CHUNK), make_image(4 * CHUNK)
    with TrackedVolume.track(a) as va, TrackedVolume.track(b) as vb:
        va.write(0, b"a")
        vb.write(0, b"b")
        snap = Snapshot.create([va, vb])
        expected = {id(va): a.read_bytes(), id(vb): b.read_bytes()}
        snap.take()
        assert va.cbt_info().changes_number == vb.cbt_info().changes_number == 1
        va.write(0, os.urandom(4 * CHUNK))
        vb.write(0, os.urandom(4 * CHUNK))
        for vol in (va, vb):
            assert snap.image(vol).read(0, vol.size) == expected[id(vol)]
        snap.destroy()


def test_lifecycle_errors(make_image: MakeImage) -> None:
    img = make_image(4 * CHUNK)
    other = make_image(4 * CHUNK)
    with TrackedVolume.track(img) as vol, TrackedVolume.track(other) as vol2:
        snap = Snapshot.create([vol])
        with pytest.raises(SnapshotStateError, match="not taken"):
            snap.image(vol).read(0, 1)
        with pytest.raises(SnapshotBusyError, match="already in another snapshot"):
            Snapshot.create([vol2, vol])
        Snapshot.create([vol2]).destroy()  # the failed create released vol2
        snap.take()
        with pytest.raises(SnapshotStateError, match="only once"):
            snap.take()
        with pytest.raises(UsageError, match="not in this snapshot"):
            snap.image(vol2)
        snap.destroy()
        snap.destroy()  # idempotent
        with pytest.raises(SnapshotStateError, match="destroyed"):
            snap.image(vol).read(0, 1)
        with pytest.raises(UsageError, match="twice"):
            Snapshot.create([vol, vol])
        with pytest.raises(UsageError, match="at least one"):
            Snapshot.create([])


def test_closing_a_volume_destroys_its_snapshot(make_image: MakeImage) -> None:
    img = make_image(4 * CHUNK)
    vol = TrackedVolume.track(img)
    snap = Snapshot.create([vol])
    snap.take()
    vol.close()
    with pytest.raises(SnapshotStateError):
        snap.image(vol).read(0, 1)


def test_writers_and_a_reader_in_parallel(make_image: MakeImage) -> None:
    """Three writers hammer the volume while snapshots are taken and read; every image stays exact."""
    size = 64 * CHUNK
    img = make_image(size)
    gate = threading.Lock()  # held by the test to pause the writers around a take
    stop = threading.Event()
    errors: list[BaseException] = []
    with TrackedVolume.track(img) as vol:

        def writer(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while not stop.is_set():
                    offset = rng.randrange(size)
                    length = min(rng.choice([1, 4096, CHUNK, 3 * CHUNK + 5]), size - offset)
                    data = rng.randbytes(length)
                    with gate:
                        vol.write(offset, data)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        rng = random.Random(99)
        copied = 0
        try:
            for _ in range(15):
                with gate:
                    snap = Snapshot.create([vol])
                    snap.take()
                    frozen = vol.read(0, size)
                image = snap.image(vol)
                for offset in range(0, size, CHUNK // 2):  # a sweep while the writers copy chunks away
                    assert image.read(offset, CHUNK // 2) == frozen[offset:offset + CHUNK // 2]
                for _ in range(20):
                    offset = rng.randrange(size)
                    length = min(rng.randrange(1, 4 * CHUNK), size - offset)
                    assert image.read(offset, length) == frozen[offset:offset + length]
                assert image.read(0, size) == frozen
                copied += snap.copied_chunks(vol)
                snap.destroy()
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors
        assert copied > 0

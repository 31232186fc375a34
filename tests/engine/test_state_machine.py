"""A model-based test of the engine: random writes, takes, image reads, destroys and reopens.

The model is a bytearray of the volume, the image content at the last take, and the set of tracking
blocks written since the previous take. Invariants: an image equals the volume as it was at the take,
byte for byte; after each take, the blocks whose map byte exceeds the previous changes number are
exactly the blocks written since (over-reported only through mark-dirty).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cbtbackup.engine import Snapshot, TrackedVolume, changed_runs
from cbtbackup.engine.geometry import index_range

BS = 64 << 10
CHUNK = 256 << 10
SIZE = 2 * 1024 * 1024 + 3 * BS + 1234  # not a multiple of a block or a chunk: the tails matter


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cbt-sm-"))
        self.path = self.dir / "vol.img"
        content = os.urandom(SIZE)
        self.path.write_bytes(content)
        self.model = bytearray(content)
        self.vol = TrackedVolume.track(self.path)
        self.snap: Snapshot | None = None
        self.image: bytes = b""
        self.written: set[int] = set()
        self.dirty: set[int] = set()

    def teardown(self) -> None:
        if self.snap is not None:
            self.snap.destroy()
        self.vol.close()
        shutil.rmtree(self.dir)

    @rule(
        offset=st.integers(0, SIZE - 1),
        length=st.one_of(st.integers(1, 16), st.integers(1, 3 * CHUNK + 100), st.sampled_from([BS, CHUNK])),
        align=st.booleans(),
    )
    def write(self, offset: int, length: int, align: bool) -> None:
        if align:
            offset -= offset % BS
        length = min(length, SIZE - offset)
        data = os.urandom(length)
        self.vol.write(offset, data)
        self.model[offset:offset + length] = data
        self.written.update(index_range(offset, length, BS))

    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 2 * BS))
    def mark_dirty(self, offset: int, length: int) -> None:
        length = min(length, SIZE - offset)
        self.vol.mark_dirty([(offset, length)])
        self.dirty.update(index_range(offset, length, BS))

    @rule()
    def take(self) -> None:
        if self.snap is not None:
            self.snap.destroy()
        before = self.vol.cbt_info()
        self.snap = Snapshot.create([self.vol], self.dir, step=1 << 20)
        self.snap.take()
        self.image = bytes(self.model)
        after = self.vol.cbt_info()
        assert after.changes_number == before.changes_number + 1
        assert after.generation_id == before.generation_id
        reported = {b for first, n in changed_runs(self.vol.cbt_map(), before.changes_number)
                    for b in range(first, first + n)}
        assert self.written <= reported
        assert reported <= self.written | self.dirty
        self.written = set()
        self.dirty = set()

    @precondition(lambda self: self.snap is not None)
    @rule(offset=st.integers(0, SIZE - 1), length=st.integers(1, 3 * CHUNK))
    def read_image(self, offset: int, length: int) -> None:
        assert self.snap is not None
        length = min(length, SIZE - offset)
        assert self.snap.image(self.vol).read(offset, length) == self.image[offset:offset + length]

    @precondition(lambda self: self.snap is not None)
    @rule()
    def destroy(self) -> None:
        assert self.snap is not None
        self.snap.destroy()
        self.snap = None

    @rule()
    def reopen(self) -> None:
        if self.snap is not None:
            self.snap.destroy()
            self.snap = None
        gen = self.vol.cbt_info().generation_id
        live = self.vol.cbt_live_map()
        self.vol.close()
        self.vol = TrackedVolume.open(self.path)
        assert self.vol.cbt_info().generation_id == gen
        assert self.vol.cbt_live_map() == live

    @invariant()
    def volume_matches_model(self) -> None:
        assert self.vol.read(0, SIZE) == bytes(self.model)

    @invariant()
    def whole_image_matches_take(self) -> None:
        if self.snap is not None:
            assert self.snap.image(self.vol).read(0, SIZE) == self.image


EngineMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEngine = EngineMachine.TestCase

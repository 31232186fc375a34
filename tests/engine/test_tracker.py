"""Change tracking: numbering, persistence, the overflow pitfall and the restart rules."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from cbtbackup.engine import Snapshot, TrackedVolume, changed_runs, plan_incremental
from cbtbackup.engine import tracker as tracker_mod
from tests.conftest import MakeImage

BS = 64 << 10


def take(vol: TrackedVolume) -> None:
    with Snapshot.create([vol]) as snap:
        snap.take()


def changed(vol: TrackedVolume, since: int) -> set[int]:
    return {b for first, n in changed_runs(vol.cbt_map(), since) for b in range(first, first + n)}


def test_track_starts_a_generation_at_zero(make_image: MakeImage) -> None:
    img = make_image(3 * BS + 100)
    with TrackedVolume.track(img) as vol:
        info = vol.cbt_info()
        assert info.device_capacity == 3 * BS + 100
        assert info.block_size == BS
        assert info.block_count == 4
        assert info.changes_number == 0
        assert vol.cbt_map() == bytes(4)
    state = img.with_name(img.name + ".cbt")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_writes_are_marked_and_take_switches_numbers(make_image: MakeImage) -> None:
    img = make_image(16 * BS)
    with TrackedVolume.track(img) as vol:
        vol.write(BS - 1, b"ab")  # straddles blocks 0 and 1
        vol.write(5 * BS, b"c" * (2 * BS))  # exactly blocks 5 and 6
        assert vol.cbt_live_map()[:8] == bytes([1, 1, 0, 0, 0, 1, 1, 0])
        take(vol)
        assert vol.cbt_info().changes_number == 1
        assert changed(vol, 0) == {0, 1, 5, 6}
        vol.write(15 * BS + 7, b"d")
        take(vol)
        assert vol.cbt_info().changes_number == 2
        assert changed(vol, 1) == {15}
        assert changed(vol, 0) == {0, 1, 5, 6, 15}


def test_explicit_block_size(make_image: MakeImage) -> None:
    img = make_image(1 << 20)
    with TrackedVolume.track(img, block_size=4096) as vol:
        assert vol.cbt_info().block_count == 256
        vol.write(4096 * 10 + 5, b"x")
        assert vol.cbt_live_map()[10] == 1


def test_state_survives_close_and_reopen(make_image: MakeImage) -> None:
    img = make_image(8 * BS)
    with TrackedVolume.track(img) as vol:
        vol.write(0, b"x")
        take(vol)
        vol.write(3 * BS, b"y")
        gen = vol.cbt_info().generation_id
    with TrackedVolume.open(img) as vol:
        info = vol.cbt_info()
        assert info.generation_id == gen
        assert info.changes_number == 1
        assert changed(vol, 0) == {0}
        assert vol.cbt_live_map()[3] == 2
        take(vol)
        assert changed(vol, 1) == {3}


def test_mark_dirty_marks_both_maps(make_image: MakeImage) -> None:
    img = make_image(8 * BS)
    with TrackedVolume.track(img) as vol:
        take(vol)
        take(vol)  # changes_number 2, a backup would store 1 or 2
        vol.mark_dirty([(2 * BS + 10, 1), (6 * BS, 2 * BS)])
        assert changed(vol, 1) == {2, 6, 7}  # visible to a backup of the current snapshot
        take(vol)
        assert changed(vol, 2) == {2, 6, 7}  # and to the next one


def test_overflow_starts_a_new_generation_with_the_255_report(make_image: MakeImage) -> None:
    img = make_image(4 * BS)
    with TrackedVolume.track(img) as vol:
        gen0 = vol.cbt_info().generation_id
        for _ in range(254):
            take(vol)
        vol.write(0, b"x")
        before = vol.cbt_info()
        assert before.changes_number == 254 and before.generation_id == gen0
        take(vol)  # active would reach 256
        after = vol.cbt_info()
        assert after.changes_number == 255
        assert after.generation_id != gen0
        assert vol.reset_reason == "changes number overflow"
        assert vol.cbt_live_map() == bytes(4)
        decision = plan_incremental(before.checkpoint(), after)
        assert not decision.use_cbt and "generation" in decision.reason
        vol.write(BS, b"y")
        take(vol)
        nxt = vol.cbt_info()
        assert (nxt.generation_id, nxt.changes_number) == (after.generation_id, 1)
        # The pitfall: a naive "map > 255" finds nothing, so the planner must refuse CBT here.
        assert changed(vol, 255) == set()
        decision = plan_incremental(after.checkpoint(), nxt)
        assert not decision.use_cbt and "did not advance" in decision.reason
        vol.write(2 * BS, b"z")
        take(vol)
        assert plan_incremental(nxt.checkpoint(), vol.cbt_info()).use_cbt
        assert changed(vol, 1) == {2}


def _kill_dirty(vol: TrackedVolume) -> None:
    """Leave the volume as a killed process would: the state not closed cleanly, the lock dropped."""
    vol._tracker._state.close()
    os.close(vol._fd)
    vol._lock.release()
    vol.closed = True


@pytest.mark.parametrize("reboot", [False, True], ids=["same boot", "across a reboot"])
@pytest.mark.parametrize("durable", [False, True], ids=["plain", "durable"])
def test_an_unclean_stop_always_starts_a_new_generation(
    make_image: MakeImage, monkeypatch: pytest.MonkeyPatch, reboot: bool, durable: bool
) -> None:
    """Nothing recorded the image when the tracker died, so a write after its death could not be told apart."""
    img = make_image(4 * BS)
    vol = TrackedVolume.track(img, durable=durable)
    gen = vol.cbt_info().generation_id
    vol.write(0, b"x")
    _kill_dirty(vol)
    with open(img, "r+b") as f:  # after the death, in the same clock tick as the tracker's last write
        f.seek(2 * BS)
        f.write(b"y")
    if reboot:
        monkeypatch.setattr(tracker_mod, "current_boot_id", lambda: uuid.uuid4().bytes)
    with TrackedVolume.open(img) as vol:
        assert vol.cbt_info().generation_id != gen
        assert vol.reset_reason.startswith("the tracker was not closed cleanly")


def test_clean_close_then_reboot_keeps_the_generation(make_image: MakeImage, monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_image(4 * BS)
    with TrackedVolume.track(img) as vol:
        gen = vol.cbt_info().generation_id
    monkeypatch.setattr(tracker_mod, "current_boot_id", lambda: uuid.uuid4().bytes)
    with TrackedVolume.open(img) as vol:
        assert vol.cbt_info().generation_id == gen


def test_a_write_while_untracked_starts_a_new_generation(make_image: MakeImage) -> None:
    img = make_image(4 * BS)
    with TrackedVolume.track(img) as vol:
        gen = vol.cbt_info().generation_id
    with open(img, "r+b") as f:  # behind the tracker's back
        f.seek(BS)
        f.write(b"sneaky")
    with TrackedVolume.open(img) as vol:
        assert vol.cbt_info().generation_id != gen
        assert vol.reset_reason == "the image was written while it was not tracked"


def test_a_size_change_starts_a_new_generation(make_image: MakeImage) -> None:
    img = make_image(4 * BS)
    with TrackedVolume.track(img) as vol:
        gen = vol.cbt_info().generation_id
    os.truncate(img, 6 * BS)
    with TrackedVolume.open(img) as vol:
        info = vol.cbt_info()
        assert info.generation_id != gen
        assert (info.device_capacity, info.block_count) == (6 * BS, 6)
        assert "size changed" in vol.reset_reason


def test_state_dir_can_live_elsewhere(make_image: MakeImage, tmp_path: Path) -> None:
    img = make_image(4 * BS)
    elsewhere = tmp_path / "state" / "here"
    with TrackedVolume.track(img, state_dir=elsewhere) as vol:
        vol.write(0, b"q")
    assert not img.with_name(img.name + ".cbt").exists()
    with TrackedVolume.open(img, state_dir=elsewhere) as vol:
        assert vol.cbt_live_map()[0] == 1


def test_torn_header_update_falls_back_to_the_older_slot(make_image: MakeImage) -> None:
    img = make_image(4 * BS)
    with TrackedVolume.track(img) as vol:
        take(vol)
        state_path = vol._tracker._state.path
        slot = vol._tracker._state._slot
    # Tear the newest slot as a kill in the middle of a header update would.
    with open(state_path, "r+b") as f:
        f.seek(slot * 4096 + 20)
        f.write(b"\xff\xff\xff")
    with TrackedVolume.open(img) as vol:
        assert vol.cbt_info().changes_number == 1

"""SIGKILL at random moments: the map is never trusted afterwards, and never under-reports before."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

from cbtbackup.engine import Snapshot, TrackedVolume, default_state_dir
from cbtbackup.engine.tracker import STATE_FILE
from cbtbackup.engine.tracker_state import TrackerStateFile
from tests.conftest import MakeImage

BS = 64 << 10
SIZE = 8 << 20

# The child writes at random (and now and then takes a snapshot) until it is killed.
CHILD = """
import os, random, sys
from cbtbackup.engine import Snapshot, TrackedVolume
vol = TrackedVolume.open(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    if rng.random() < 0.05:
        snap = Snapshot.create([vol], step=1 << 20)
        snap.take()
        snap.destroy()
    offset = rng.randrange(vol.size)
    length = min(rng.choice([1, 512, 4096, 65536, 300000, 1 << 20]), vol.size - offset)
    vol.write(offset, os.urandom(length))
"""


def test_sigkill_at_random_moments_never_loses_a_mark(make_image: MakeImage) -> None:
    img = make_image(SIZE)
    rng = random.Random(1234)
    with TrackedVolume.track(img) as vol:
        generation = vol.cbt_info().generation_id
    changed_rounds = 0
    for round_no in range(30):
        with TrackedVolume.open(img) as vol:
            with Snapshot.create([vol]) as snap:
                snap.take()
            since = vol.cbt_info().changes_number
            baseline = vol.read(0, SIZE)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(img), str(round_no)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Before reopening (which starts a new generation), the map as the dead child left it in the page
        # cache must cover every block whose data reached the image: marks go before data.
        state = TrackerStateFile(default_state_dir(img) / STATE_FILE)
        live = bytes(state.write_map)
        state.close()
        now = img.read_bytes()
        differs = {b for b in range(SIZE // BS) if now[b * BS:(b + 1) * BS] != baseline[b * BS:(b + 1) * BS]}
        marked = {b for b in range(len(live)) if live[b] > since}
        assert differs <= marked, f"round {round_no}: blocks {sorted(differs - marked)} changed unmarked"
        changed_rounds += bool(differs)
        with TrackedVolume.open(img) as vol:
            assert vol.cbt_info().generation_id != generation  # a kill is never trusted
            assert vol.reset_reason.startswith("the tracker was not closed cleanly")
            generation = vol.cbt_info().generation_id
    assert changed_rounds >= 20  # the child got to write in most rounds


# The worst moment, made certain: the child dies right after its data reached the image.
DIE_AFTER_WRITE = """
import os, signal, sys
from cbtbackup.engine import TrackedVolume
vol = TrackedVolume.open(sys.argv[1])
real_pwrite = os.pwrite
def pwrite_then_die(fd, data, offset):
    real_pwrite(fd, data, offset)
    os.kill(os.getpid(), signal.SIGKILL)
os.pwrite = pwrite_then_die
vol.write(int(sys.argv[2]), b"written just before the kill")
"""


def test_sigkill_right_after_the_data_lands(make_image: MakeImage) -> None:
    img = make_image(SIZE)
    with TrackedVolume.track(img):
        pass
    for offset in (0, 5 * BS - 3, SIZE - 28):
        child = subprocess.run([sys.executable, "-c", DIE_AFTER_WRITE, str(img), str(offset)])
        assert child.returncode == -signal.SIGKILL
        state = TrackerStateFile(default_state_dir(img) / STATE_FILE)
        live, active = bytes(state.write_map), state.header.active
        state.close()
        for block in {offset // BS, (offset + 27) // BS}:
            assert live[block] == active
        with TrackedVolume.open(img) as vol:
            assert vol.read(offset, 28) == b"written just before the kill"
            assert vol.reset_reason.startswith("the tracker was not closed cleanly")

"""The userspace engine's Python API, start to finish, on a 64 MiB image in a temporary directory.

Run: python examples/engine_api.py
It tracks an image, writes through the engine, takes a snapshot, keeps writing while reading the
snapshot image, and shows which tracking blocks a backup of the next snapshot would read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cbtbackup.engine import Snapshot, TrackedVolume, changed_runs, plan_incremental

MiB = 1 << 20


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        image.write_bytes(os.urandom(64 * MiB))

        with TrackedVolume.track(image) as vol:  # state goes to disk.img.cbt/ beside the image
            print("tracking:", vol.cbt_info())
            vol.write(10 * MiB, b"hello" * 1000)

            # A consistent point in time: the first overwrite of each 256 KiB chunk saves its old content.
            with Snapshot.create([vol], diff_storage=tmp, limit=16 * MiB) as snap:
                snap.take()
                first = vol.cbt_info()
                at_take = snap.image(vol).read(10 * MiB, 5000)
                vol.write(10 * MiB, b"world" * 1000)  # goes on while the snapshot is held
                assert snap.image(vol).read(10 * MiB, 5000) == at_take
                assert vol.read(10 * MiB, 5) == b"world"
                print("snapshot", first.changes_number, "copied chunks:", snap.copied_chunks(vol))

            vol.write(40 * MiB, os.urandom(3 * MiB))
            with Snapshot.create([vol], diff_storage=tmp) as snap:
                snap.take()
                second = vol.cbt_info()
                decision = plan_incremental(first.checkpoint(), second)
                print("use CBT:", decision.use_cbt, "-", decision.reason)
                for block, count in changed_runs(vol.cbt_map(), first.changes_number):
                    offset, length = block * second.block_size, count * second.block_size
                    data = snap.image(vol).read(offset, min(length, vol.size - offset))
                    print(f"  changed: {length // 1024} KiB at {offset}, read {len(data)} bytes")


if __name__ == "__main__":
    main()

"""An RBD incremental against a full of the same image: seconds and bytes read from the cluster, for an
image without fast-diff (librbd asks every object), with fast-diff reading whole changed objects, and with
fast-diff refined to the changed objects' exact extents (what the provider does).

Each mode gets its own image (random data), a full, then 1 % of the image rewritten in scattered 64 KiB
writes, then an incremental — all in one run, side by side. The bytes read from the cluster are counted by
the provider's own counter of librbd reads.

Uses the cluster of CBTBACKUP_TEST_CEPH_CONF (or CEPH_CONF), or starts one with tests/servers/ceph-cluster.

Usage: python bench/rbd_incremental.py [--size-mib 512] [--changed 0.01] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cbtbackup.engine.rbd.cluster import bindings  # noqa: E402
from cbtbackup.engine.rbd.provider import RbdSession  # noqa: E402
from cbtbackup.pipeline.backup import BackupOptions, run_backup  # noqa: E402
from cbtbackup.repo.location import open_repository  # noqa: E402
from cbtbackup.repo.repository import Repository  # noqa: E402

MiB = 1 << 20
BLOCK = 64 << 10
MODES = {"no fast-diff": (False, True), "fast-diff, whole objects": (True, False),
         "fast-diff, exact extents": (True, True)}


def cluster_conf(work: Path) -> tuple[str, Path | None]:
    conf = os.environ.get("CBTBACKUP_TEST_CEPH_CONF") or os.environ.get("CEPH_CONF")
    if conf:
        return conf, None
    cluster = work / "cluster"
    started = subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "start", str(cluster), "7483"],
                             capture_output=True, text=True, env={**os.environ, "CEPH_MON_PORT": "6792"})
    if started.returncode != 0:
        sys.exit(f"rbd_incremental: Ceph cannot start: {started.stderr.strip().splitlines()[-1:]}")
    return str(cluster / "ceph.conf"), cluster


class ReadCounter:
    """The bytes each backup's session read from the cluster."""

    def __init__(self) -> None:
        self.last = 0
        original = RbdSession.close

        def close(session_self: RbdSession) -> None:
            self.last = session_self.bytes_read
            original(session_self)

        RbdSession.close = close  # type: ignore[method-assign,assignment]


def run_mode(repo: Repository, ioctx: Any, name: str, fast_diff: bool, exact: bool, size: int, changed: float,
             counter: ReadCounter) -> dict[str, Any]:
    _, rbd = bindings()
    features = rbd.RBD_FEATURE_LAYERING
    if fast_diff:
        features |= rbd.RBD_FEATURE_EXCLUSIVE_LOCK | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF
    rbd.RBD().create(ioctx, name, size, old_format=False, features=features)
    try:
        with rbd.Image(ioctx, name) as image:
            for offset in range(0, size, 4 * MiB):
                image.write(os.urandom(4 * MiB), offset)
        RbdSession.exact_within_objects = exact
        source = f"rbd:rbd/{name}"
        started = time.monotonic()
        full = run_backup(repo, BackupOptions(source, "full", name=name))
        full_s, full_read = time.monotonic() - started, counter.last
        rng = random.Random(7)
        blocks = rng.sample(range(size // BLOCK), int(size * changed) // BLOCK)
        with rbd.Image(ioctx, name) as image:
            for block in blocks:
                image.write(os.urandom(BLOCK), block * BLOCK)
        started = time.monotonic()
        incr = run_backup(repo, BackupOptions(source, "incr", name=name))
        incr_s, incr_read = time.monotonic() - started, counter.last
        assert incr.manifest.method == "cbt", incr.notes
        assert full.manifest.kind == "full"
        return {"full_s": round(full_s, 3), "full_read": full_read, "incr_s": round(incr_s, 3),
                "incr_read": incr_read, "changed_bytes": len(blocks) * BLOCK}
    finally:
        with rbd.Image(ioctx, name) as image:
            for snap in list(image.list_snaps()):
                image.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, name)
        RbdSession.exact_within_objects = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbt-rbd-bench-") as work_dir:
        work = Path(work_dir)
        conf, cluster = cluster_conf(work)
        os.environ["CEPH_CONF"] = conf
        try:
            subprocess.run([sys.executable, "-m", "cbtbackup", "init", "-r", str(work / "repo"), "--encryption",
                            "none"], check=True, capture_output=True)
            repo = open_repository(str(work / "repo"))
            rados, _ = bindings()
            handle = rados.Rados(conffile=conf)
            handle.connect(timeout=30)
            ioctx = handle.open_ioctx("rbd")
            counter = ReadCounter()
            results = {mode: run_mode(repo, ioctx, f"bench-{i}-{os.getpid()}", fast, exact,
                                      args.size_mib * MiB, args.changed, counter)
                       for i, (mode, (fast, exact)) in enumerate(MODES.items())}
            ioctx.close()
            handle.shutdown()
        finally:
            if cluster is not None:
                subprocess.run(["bash", str(ROOT / "tests/servers/ceph-cluster"), "stop", str(cluster)])
    if args.json:
        print(json.dumps({"size_mib": args.size_mib, "changed": args.changed, "modes": results}))
        return
    print(f"{args.size_mib} MiB image, {args.changed:.0%} rewritten in scattered 64 KiB blocks")
    print(f"{'mode':<28}{'full':>18}{'incr':>18}{'incr read / changed':>21}{'incr / full s':>15}")
    for mode, r in results.items():
        ratio = r["incr_read"] / r["changed_bytes"]
        full_mib, incr_mib = r['full_read'] / MiB, r['incr_read'] / MiB
        print(f"{mode:<28}{r['full_s']:>7.2f} s {full_mib:>6.0f} MiB"
              f"{r['incr_s']:>7.2f} s {incr_mib:>6.1f} MiB{ratio:>20.2f}x{r['incr_s'] / r['full_s']:>14.3f}x")


if __name__ == "__main__":
    main()

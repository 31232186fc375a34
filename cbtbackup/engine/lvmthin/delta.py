"""What changed between two thin devices of one pool, as ``thin_delta`` reports it.

``thin_delta`` reads the pool's metadata, which the kernel changes while the pool runs; it reads a
*metadata snapshot*, which must be reserved for the duration (``dmsetup message … reserve_metadata_snap``)
and released afterwards. A metadata snapshot older than the newer thin device would not know it, so one
found reserved already (a killed run, or another tool) is released and reserved again — fresh.

Its XML names ranges in data blocks (``data_block_size`` sectors each): ``different`` (mapped in both, to
other data), ``right_only`` (mapped only in the newer: written), ``left_only`` (mapped only in the older:
discarded, so zeros now) and ``same``. With ``--verbose`` each is a list of ``range`` elements; without, the
element carries ``begin`` and ``length`` itself. Both are read.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable

from cbtbackup.engine.lvmthin.lvm import LvmError, dm_name, run

SECTOR = 512


@dataclasses.dataclass(frozen=True)
class Delta:
    changed: list[tuple[int, int]]  # (offset, length) in bytes: different or right_only
    discarded: list[tuple[int, int]]  # left_only: zeros in the newer device


def parse_delta(xml: str) -> Delta:
    root = ET.fromstring(xml)
    block = int(root.get("data_block_size", "0")) * SECTOR
    if block <= 0:
        raise LvmError(f"thin_delta gave no data block size: {xml[:200]!r}")
    changed: list[tuple[int, int]] = []
    discarded: list[tuple[int, int]] = []
    for element in root.iter():
        target = {"different": changed, "right_only": changed, "left_only": discarded}.get(element.tag)
        if target is None:
            continue
        ranges = [element] if element.get("begin") is not None else list(element.iter("range"))
        for r in ranges:
            target.append((int(r.get("begin", "0")) * block, int(r.get("length", "0")) * block))
    return Delta(sorted(changed), sorted(discarded))


def thin_delta(vg: str, pool: str, left_id: int, right_id: int, notice: Callable[[str], None]) -> Delta:
    """The changes from thin device ``left_id`` to ``right_id`` of ``vg/pool``."""
    tpool = f"/dev/mapper/{dm_name(vg, pool)}-tpool"
    tmeta = f"/dev/mapper/{dm_name(vg, pool + '_tmeta')}"
    what = f"reserve the metadata snapshot of {vg}/{pool}"
    try:
        run("dmsetup", "message", tpool, "0", "reserve_metadata_snap", what=what)
    except LvmError:  # one is reserved already: it may predate our snapshot, so take a fresh one
        notice(f"{vg}/{pool} had a metadata snapshot reserved already (a killed run or another tool); "
               "replacing it with a fresh one")
        run("dmsetup", "message", tpool, "0", "release_metadata_snap", what=f"release the metadata snapshot of "
            f"{vg}/{pool}")
        run("dmsetup", "message", tpool, "0", "reserve_metadata_snap", what=what)
    try:
        out = run("thin_delta", "-m", "--verbose", "--snap1", str(left_id), "--snap2", str(right_id), tmeta,
                  what=f"compare thin devices {left_id} and {right_id} of {vg}/{pool}")
    finally:
        run("dmsetup", "message", tpool, "0", "release_metadata_snap",
            what=f"release the metadata snapshot of {vg}/{pool}")
    try:
        return parse_delta(out)
    except ET.ParseError as e:
        raise LvmError(f"thin_delta's report cannot be read: {e}") from None

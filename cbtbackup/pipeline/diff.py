"""``diff``: the byte ranges where two backups differ, from their manifests alone (no chunk is read).

Two bytes are the same when both maps say they are the same byte of the same chunk (or both zeros).
Bytes stored anew with the same content (a block rewritten with what it held) count as different: the
ranges are what was written between the two backups, at the granularity it was stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cbtbackup.model.extent_map import ExtentMap
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository


@dataclasses.dataclass
class DiffResult:
    a: BackupRef
    b: BackupRef
    ranges: list[tuple[int, int]]  # (offset, length), sorted, merged

    @property
    def bytes_differing(self) -> int:
        return sum(length for _, length in self.ranges)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a.id, "b": self.b.id, "bytes_differing": self.bytes_differing,
                "ranges": [{"offset": o, "length": n} for o, n in self.ranges]}


def differing_ranges(a: ExtentMap, b: ExtentMap) -> list[tuple[int, int]]:
    """Ranges where the two resolved maps name different bytes; past the shorter map, everything differs."""
    out: list[tuple[int, int]] = []

    def emit(start: int, end: int) -> None:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, end - start))

    i = j = 0
    pos = 0
    while i < len(a) and j < len(b):
        pa, pb = a[i], b[j]
        end = min(pa.end, pb.end)
        same = (pa.is_zero and pb.is_zero) or (
            pa.digest == pb.digest and pa.chunk_offset + (pos - pa.offset) == pb.chunk_offset + (pos - pb.offset))
        if not same:
            emit(pos, end)
        pos = end
        if pa.end == end:
            i += 1
        if pb.end == end:
            j += 1
    longer = max(a.end, b.end)
    if pos < longer:
        emit(pos, longer)
    return out


def run_diff(repo: Repository, a_spec: str, b_spec: str) -> DiffResult:
    a, b = repo.find(a_spec), repo.find(b_spec)
    return DiffResult(a, b, differing_ranges(repo.resolve(a)[1], repo.resolve(b)[1]))

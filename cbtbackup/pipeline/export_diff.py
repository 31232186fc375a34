"""``export-diff``: an ``rbd export-diff`` stream of one backup, or of what changed between two backups of a
chain, for ``rbd import-diff`` — whatever the backups' source was.

The ranges come from the two backups' maps alone (:func:`diff.differing_ranges`: no chunk is read to find
them); the bytes through the random-access reader every other consumer of backups uses, so memory stays
the reader's bound whatever the image's size. Data records are at most 4 MiB (``rbd import-diff`` holds a
record in memory); zero pieces become ``z`` records, so importing onto an image that held other data still
yields exactly the backup. The to-snapshot record names the backup's id and the from-snapshot record the
older one's: ``rbd import-diff`` refuses a stream whose from-snapshot the image lacks (its own guard
against applying a diff to the wrong base) and ends by taking the to-snapshot, ready for the next stream.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbtbackup.errors import BusyError, StorageError, UsageError, os_error
from cbtbackup.model import rbd_diff
from cbtbackup.pipeline.diff import differing_ranges
from cbtbackup.pipeline.progress import NullProgress, Progress
from cbtbackup.pipeline.reader import BackupReader
from cbtbackup.repo.manifest import BackupRef
from cbtbackup.repo.repository import Repository

Write = Callable[[bytes], object]


@dataclasses.dataclass
class ExportDiffResult:
    backup: BackupRef
    since: BackupRef | None
    size: int
    bytes_data: int  # in w records
    bytes_zero: int  # covered by z records
    records: int
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.backup.id, "name": self.backup.name, "from": self.since.id if self.since else None,
                "device_size": self.size, "bytes_data": self.bytes_data, "bytes_zero": self.bytes_zero,
                "records": self.records, "duration_s": self.duration_s}


def plan_export(repo: Repository, backup: str, since: str | None) -> tuple[BackupRef, BackupRef | None]:
    """The two backups, checked: ``since`` must be an older backup of the same chain."""
    b = repo.find(backup)
    if since is None:
        return b, None
    a = repo.find(since)
    if a.name != b.name:
        raise UsageError(f"--from {a.id} is of the chain {a.name!r}, not {b.name!r}: a diff between chains "
                         "applies to no image")
    if repo.load_manifest(a).created >= repo.load_manifest(b).created:
        raise UsageError(f"--from {a.id} is not older than {b.id}: name the older backup with --from")
    return b, a


def export_diff(repo: Repository, b: BackupRef, a: BackupRef | None, write: Write, *,
                snapshot_names: bool = True, progress: Progress | None = None) -> ExportDiffResult:
    """Write the stream that takes an image holding ``a`` (or any image, for ``a`` None) to ``b``."""
    progress = progress or NullProgress()
    started = time.monotonic()
    reader = BackupReader(repo, b)
    try:
        size = reader.size
        ranges = [(0, size)] if a is None else [
            (o, min(n, size - o)) for o, n in differing_ranges(repo.resolve(a)[1], reader.map) if o < size]
        write(rbd_diff.metadata(size, a.id if a is not None and snapshot_names else None,
                                b.id if snapshot_names else None))
        data = zero = records = 0
        progress.start(sum(n for _, n in ranges), f"export-diff {b.id}")
        for start, length in ranges:
            zero_run: tuple[int, int] | None = None
            for piece in reader.pieces(start, length):
                if piece.is_zero:
                    zero_run = (zero_run[0], piece.end - zero_run[0]) if zero_run else (piece.offset, piece.length)
                    progress.advance(piece.length)
                    continue
                if zero_run is not None:
                    write(rbd_diff.zero_record(*zero_run))
                    zero, records, zero_run = zero + zero_run[1], records + 1, None
                for pos in range(piece.offset, piece.end, rbd_diff.MAX_DATA_RECORD):
                    n = min(rbd_diff.MAX_DATA_RECORD, piece.end - pos)
                    write(rbd_diff.data_header(pos, n))
                    write(reader.read(pos, n))
                    data, records = data + n, records + 1
                progress.advance(piece.length)
            if zero_run is not None:
                write(rbd_diff.zero_record(*zero_run))
                zero, records = zero + zero_run[1], records + 1
        write(rbd_diff.END)
        progress.finish()
    finally:
        reader.close()
    return ExportDiffResult(b, a, size, data, zero, records, round(time.monotonic() - started, 3))


STDOUT = "-"


def run_export_diff(repo: Repository, backup: str, since: str | None, target: str, *, force: bool = False,
                    snapshot_names: bool = True, progress: Progress | None = None) -> ExportDiffResult:
    """The stream into ``target``: a file, written beside it and renamed into place only when whole (an
    existing one only with ``force``), or ``-`` for standard output."""
    b, a = plan_export(repo, backup, since)
    if target == STDOUT:
        if os.isatty(1):
            raise UsageError("refusing to write a diff stream to a terminal; pipe it (to rbd import-diff - "
                             "POOL/IMAGE) or name a file")
        try:
            with open(1, "wb", buffering=1 << 20, closefd=False) as out:
                return export_diff(repo, b, a, out.write, snapshot_names=snapshot_names, progress=progress)
        except BrokenPipeError:
            raise StorageError("the reader of the stream went away") from None
    path = Path(target)
    if path.exists() and not force:
        raise BusyError(f"{path} exists; add --force to replace it")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} is not a regular file")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as e:
        raise os_error(e, f"cannot write beside {path}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            result = export_diff(repo, b, a, f.write, snapshot_names=snapshot_names, progress=progress)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return result

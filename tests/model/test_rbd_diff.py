"""The rbd diff v1 stream format: what the writer emits reads back, and a cut stream is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cbtbackup.model import rbd_diff


def test_records_read_back() -> None:
    stream = (rbd_diff.metadata(1 << 20, "a", "b") + rbd_diff.data_header(4096, 4) + b"abcd"
              + rbd_diff.zero_record(8192, 65536) + rbd_diff.END)
    meta, records = rbd_diff.read_stream(io.BytesIO(stream))
    assert (meta.from_snap, meta.to_snap, meta.size) == ("a", "b", 1 << 20)
    assert list(records) == [rbd_diff.Record("w", 4096, 4, b"abcd"), rbd_diff.Record("z", 8192, 65536)]


@pytest.mark.parametrize("cut", [0, 5, 13, 30])
def test_the_parser_refuses_a_truncated_stream(cut: int, tmp_path: Path) -> None:
    stream = rbd_diff.metadata(1 << 20, None, "b") + rbd_diff.data_header(0, 4) + b"abcd" + rbd_diff.END
    path = tmp_path / "s"
    path.write_bytes(stream[:cut])
    with open(path, "rb") as f, pytest.raises(rbd_diff.DiffFormatError):
        _, records = rbd_diff.read_stream(f)
        list(records)

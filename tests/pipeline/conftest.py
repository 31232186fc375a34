"""Fixtures of the pipeline tests: the restore's direct writes, counted."""

from __future__ import annotations

import pytest

from cbtbackup.pipeline.target_io import DirectWriter


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(offset, length) of every run a DirectWriter wrote."""
    taken: list[tuple[int, int]] = []
    real = DirectWriter.write_buffer

    def counted(self: DirectWriter, start: int, length: int, offset: int) -> bool:
        done = real(self, start, length, offset)
        if done:
            taken.append((offset, length))
        return done

    monkeypatch.setattr(DirectWriter, "write_buffer", counted)
    return taken

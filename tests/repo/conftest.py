"""Every store backend the tests can run here, for the conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cbtbackup.repo.local_store import LocalStore
from cbtbackup.repo.store import Store


@pytest.fixture(params=["local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
        (tmp_path / "store").mkdir()
    yield s
    s.close()

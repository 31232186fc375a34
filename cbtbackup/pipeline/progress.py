"""How pipelines report progress: a tiny protocol with a silent default; the CLI draws bars."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total_bytes: int, description: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def finish(self) -> None: ...

    def notice(self, message: str) -> None:
        """One line for the user (why an incremental fell back to a scan, for example)."""
        ...


class NullProgress:
    """Reports nothing; remembers notices so a caller can still show them."""

    def __init__(self) -> None:
        self.notices: list[str] = []

    def start(self, total_bytes: int, description: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def notice(self, message: str) -> None:
        self.notices.append(message)

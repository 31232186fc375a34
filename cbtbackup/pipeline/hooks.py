"""Named pause points of the pipelines, so tests can interleave runs without sleeping.

A pipeline calls ``hook(point)`` at fixed places (``"snapshot-taken"``, ``"before-commit"``, ``"marked"``,
``"deleting"`` …, each documented where it is called); the default does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[str], None]


def no_hook(point: str) -> None:
    """The default: run straight through."""

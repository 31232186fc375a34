"""Human sizes: ``1MiB``, ``64k``, ``2G`` (binary units) to bytes and back."""

from __future__ import annotations

import re

from cbtbackup.errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse a size; every unit is binary (``1M`` = ``1MiB`` = 1048576)."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"{text!r} is not a size (examples: 4096, 64KiB, 1MiB, 2G)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def format_size(n: int) -> str:
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"

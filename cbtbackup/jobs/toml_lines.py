"""Which line of a TOML file each table and key is on, so an error in a job file can name its line.

``tomllib`` gives values but not positions. Job files are small and written by hand: headers (``[a.b]``,
``[[sources]]``) and ``key = value`` lines cover them. A key this scan cannot place (a multi-line inline table,
say) falls back to its table's line, which is still the right place to look.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", dotted)]


class LineIndex:
    """Table and key paths (with array-of-table indices: ``("sources", 1, "hooks", "before")``) → line."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Path, int] = {}
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables name -> index of its last element
        table: Path = ()
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            if line.count('"""') % 2 or line.count("'''") % 2:
                in_multiline = not in_multiline
                if not in_multiline:
                    continue
            elif in_multiline:
                continue
            if header := _HEADER.match(line):
                names = _parts(header.group(2))
                if header.group(1) == "[[":
                    arrays[tuple(names)] = arrays.get(tuple(names), -1) + 1
                table = self._with_indices(names, arrays)
                for end in range(1, len(table) + 1):  # [a.b] also places a
                    self._lines.setdefault(table[:end], number)
            elif key := _KEY.match(line):
                self._lines.setdefault((*table, *_parts(key.group(1))), number)

    @staticmethod
    def _with_indices(names: list[str], arrays: dict[tuple[str, ...], int]) -> Path:
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            index = arrays.get(tuple(names[: i + 1]))
            if index is not None:
                path.append(index)
        return tuple(path)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, else of the nearest enclosing table that has one."""
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None

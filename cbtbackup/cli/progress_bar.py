"""A tqdm progress bar on a terminal; silence elsewhere. Notices always go to stderr."""

from __future__ import annotations

import shutil
import sys
import threading

import click

from cbtbackup.pipeline.progress import NullProgress, Progress


class TqdmProgress:
    def __init__(self) -> None:
        self._bar: object | None = None
        self._lock = threading.Lock()

    def start(self, total_bytes: int, description: str) -> None:
        from tqdm import tqdm

        # A terminal that reports no size (a fresh pty) makes tqdm hide the bar: fall back to 80x24.
        size = shutil.get_terminal_size()
        self._bar = tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         leave=False, file=sys.stderr, ncols=size.columns, nrows=size.lines)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(nbytes)  # type: ignore[attr-defined]

    def finish(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()  # type: ignore[attr-defined]
                self._bar = None

    def notice(self, message: str) -> None:
        print_notice(message)


class QuietProgress(NullProgress):
    def notice(self, message: str) -> None:
        super().notice(message)
        print_notice(message)


def print_notice(message: str) -> None:
    click.echo(f"cbtbackup: {message}", err=True)


def make_progress() -> Progress:
    return TqdmProgress() if sys.stderr.isatty() else QuietProgress()

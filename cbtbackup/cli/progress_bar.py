"""A tqdm progress bar on a terminal, status lines every N seconds where asked (``--progress-interval``),
silence elsewhere. Notices always go to stderr (and to the log file)."""

from __future__ import annotations

import shutil
import sys
import threading
import time

import click

from cbtbackup.cli.output import CURRENT, echoed
from cbtbackup.model.sizes import format_size
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


class IntervalProgress(QuietProgress):
    """One status line every ``interval`` seconds while work runs: what a log (journald, cron mail) keeps
    of a long full, where a bar would be a single line redrawn."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        self._what = ""
        self._started = 0.0
        self._stop: threading.Event | None = None

    def start(self, total_bytes: int, description: str) -> None:
        self.finish()
        with self._lock:
            self._done, self._total, self._what = 0, total_bytes, description
            self._started = time.monotonic()
        stop = self._stop = threading.Event()
        threading.Thread(target=self._report, args=(stop,), name="progress", daemon=True).start()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._done += nbytes

    def finish(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def _report(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            with self._lock:
                done, total, what, elapsed = self._done, self._total, self._what, time.monotonic() - self._started
            print_notice(status_line(what, done, total, elapsed))


def status_line(what: str, done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else 0.0
    share = f" ({100 * done / total:.0f} %)" if total else ""
    left = f", {_duration((total - done) / rate)} left" if rate > 0 and total > done else ""
    return f"{what}: {format_size(done)} of {format_size(total)}{share}, {format_size(int(rate))}/s{left}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def print_notice(message: str) -> None:
    click.echo(f"cbtbackup: {message}", err=True)
    echoed(message)


def make_progress() -> Progress:
    if CURRENT.quiet:
        return QuietProgress()
    if CURRENT.progress_interval is not None:
        return IntervalProgress(CURRENT.progress_interval)
    return TqdmProgress() if sys.stderr.isatty() else QuietProgress()

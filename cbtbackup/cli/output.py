"""How much a command says, and where: ``-q``/``-v``, ``--progress-interval`` and ``--log-file``.

These four are options of the whole program, and work anywhere on the command line (``cbtbackup full -q
…`` as well as ``cbtbackup -q full …``), as restic's global flags do: :func:`hoist` moves them in front of
the command name before click parses, so the group's own options take them.

- ``-q``: no progress bar or status lines, and no summary on stdout (``--json`` still prints its object);
  warnings, errors and the one-line reasons a backup fell back to a scan are still printed.
- ``-v``: what the command does, step by step, on stderr (``-vv``: more, for debugging).
- ``--progress-interval SECONDS``: a status line every SECONDS for long work, also where stderr is no
  terminal (journald, cron mail), instead of the bar.
- ``--log-file FILE``: everything said on stderr, and the ``-v`` steps, appended to FILE with timestamps.
"""

from __future__ import annotations

import dataclasses
import logging

LOGGER = "cbtbackup"
ECHO_LOGGER = "cbtbackup.echo"  # lines already printed on stderr: to the log file only

FLAGS = {"-q", "--quiet", "-v", "--verbose", "-vv"}
WITH_VALUE = {"--progress-interval", "--log-file"}


@dataclasses.dataclass
class Output:
    verbosity: int = 0  # -1 quiet, 0 normal, 1 verbose, 2 debug
    progress_interval: float | None = None
    log_file: str | None = None

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0


CURRENT = Output()


def hoist(args: list[str]) -> list[str]:
    """``args`` with the program-wide options moved in front of the command (up to a ``--``)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if arg in FLAGS:
            front.append(arg)
        elif name in WITH_VALUE:
            front.append(arg)
            if "=" not in arg and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def configure(quiet: bool, verbose: int, progress_interval: float | None, log_file: str | None) -> None:
    """Set :data:`CURRENT` and the loggers; called by the group before any command runs."""
    CURRENT.verbosity = -1 if quiet else min(verbose, 2)
    CURRENT.progress_interval = progress_interval
    CURRENT.log_file = log_file
    level = logging.DEBUG if CURRENT.verbosity >= 2 else logging.INFO
    log = logging.getLogger(LOGGER)
    log.propagate = False
    for handler in log.handlers:  # a previous command of this process (the tests run many)
        handler.close()
    log.handlers.clear()
    log.setLevel(level)
    if CURRENT.verbosity >= 1:
        console = logging.StreamHandler()  # stderr
        console.setFormatter(logging.Formatter("cbtbackup: %(message)s"))
        console.addFilter(lambda record: not record.name.startswith(ECHO_LOGGER))
        log.addHandler(console)
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(message)s"))
        log.addHandler(handler)


def echoed(line: str) -> None:
    """A line printed on stderr: into the log file too, if there is one."""
    if CURRENT.log_file:
        logging.getLogger(ECHO_LOGGER).info(line)


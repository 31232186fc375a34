"""``python -m cbtbackup``: the same as the ``cbtbackup`` command."""

from cbtbackup.cli import run

run()

"""The ``cbtbackup`` command line: thin click commands that parse, call one library function, and print."""

from cbtbackup.cli.app import cli, main, run

__all__ = ["cli", "main", "run"]

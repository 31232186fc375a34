"""One module per group of commands; importing this registers them all."""

from cbtbackup.cli.commands import backup, repository, restore, tracking

__all__ = ["backup", "repository", "restore", "tracking"]

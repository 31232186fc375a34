"""cbtbackup: block-level incremental backup of Linux volumes and disk images."""

__version__ = "0.1.0"

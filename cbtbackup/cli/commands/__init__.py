"""One module per group of commands; ``cbtbackup.cli.app.COMMANDS`` loads them by name on first use."""

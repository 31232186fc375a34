"""The click group, the options every command shares, and the one place errors become exit codes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar, cast

import click

from cbtbackup import __version__
from cbtbackup.errors import CbtError, UsageError, os_error

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds exactly like Ctrl-C, so every clean-up that Ctrl-C runs runs for it too."""


# Commands load on first use, so `cbtbackup --help` imports neither the engine nor the stores.
# name -> (module, attribute, one-line help shown in the command list)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("cbtbackup.cli.commands.repository", "init", "Create a new, empty repository."),
    "track": ("cbtbackup.cli.commands.tracking", "track", "Start change tracking of an image."),
    "cbt": ("cbtbackup.cli.commands.tracking", "cbt", "Changed block tracking: cbt info."),
    "full": ("cbtbackup.cli.commands.backup", "full", "Back up the whole of a source."),
    "incr": ("cbtbackup.cli.commands.backup", "incr", "Back up what changed since the previous backup."),
    "list": ("cbtbackup.cli.commands.repository", "list_backups", "List the backups in a repository."),
    "restore": ("cbtbackup.cli.commands.restore", "restore", "Restore a backup to a file or block device."),
    "diff": ("cbtbackup.cli.commands.restore", "diff", "The byte ranges where two backups differ."),
    "export-diff": ("cbtbackup.cli.commands.restore", "export_diff",
                    "A backup, or two backups' difference, as an rbd export-diff stream."),
    "mount": ("cbtbackup.cli.commands.access", "mount", "Mount backups read-only as image files (FUSE)."),
    "serve": ("cbtbackup.cli.commands.access", "serve", "Serve a backup read-only over NBD."),
    "web": ("cbtbackup.cli.commands.access", "web", "Serve a read-only status page of a repository."),
    "verify": ("cbtbackup.cli.commands.repository", "verify", "Check every chunk backups need."),
    "key": ("cbtbackup.cli.commands.keys", "key", "Keys of an encrypted repository: list, add, remove, passwd, export"),
    "run": ("cbtbackup.cli.commands.jobs", "run", "Run a backup job file: sources, retention, hooks, notifications."),
    "forget": ("cbtbackup.cli.commands.lifecycle", "forget", "Remove backups by id or by retention rules."),
    "prune": ("cbtbackup.cli.commands.lifecycle", "prune", "Delete chunks no backup needs."),
    "synthesize": ("cbtbackup.cli.commands.lifecycle", "synthesize", "Write a synthetic full of a backup."),
    "stats": ("cbtbackup.cli.commands.lifecycle", "stats", "Sizes and deduplication per chain and in total."),
    "unlock": ("cbtbackup.cli.commands.lifecycle", "unlock", "Remove stale repository locks."),
    "upgrade": ("cbtbackup.cli.commands.lifecycle", "upgrade", "Give an encrypted repository private object names."),
    "cache": ("cbtbackup.cli.commands.cache", "cache", "The local manifest cache: show it, or --cleanup."),
    "attach": ("cbtbackup.cli.commands.attach", "attach", "Serve a tracked image as a file and loop device."),
    "detach": ("cbtbackup.cli.commands.attach", "detach_command", "Stop serving an attached image."),
    "status": ("cbtbackup.cli.commands.attach", "status_command", "Whether an image is attached, and its CBT."),
    "blksnap": ("cbtbackup.cli.commands.blksnap", "blksnap", "The blksnap kernel module: status, detach."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])


class Seconds(click.FloatRange):
    """A number of seconds in a range; ``nan`` is no number (click's range check lets it through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        if not math.isfinite(converted):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return converted


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cbtbackup")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress and no summary; warnings and errors only (any command, anywhere on the line).")
@click.option("-v", "--verbose", count=True, help="Say each step on stderr; -vv for more.")
@click.option("--progress-interval", type=Seconds(min=0.1, max=86400), envvar="CBTBACKUP_PROGRESS_INTERVAL",
              metavar="SECONDS", help="A status line every SECONDS for long work, also when stderr is no terminal "
                                      "(journald, cron); instead of the progress bar.")
@click.option("--log-file", envvar="CBTBACKUP_LOG_FILE", metavar="FILE",
              help="Append what is said on stderr, and the -v steps, to FILE with timestamps.")
def cli(quiet: bool, verbose: int, progress_interval: float | None, log_file: str | None) -> None:
    """Block-level incremental backups of volumes and disk images, with changed block tracking."""
    from cbtbackup.cli.output import configure

    if quiet and verbose:
        raise UsageError("-q and -v contradict each other")
    try:
        configure(quiet, verbose, progress_interval, log_file)
    except OSError as e:
        raise os_error(e, f"cannot open the log file {log_file}") from None


def repo_option(f: F) -> F:
    """``-r/--repo``, ``--endpoint-url``, the passphrase options and the store's tuning (storage class, rate
    limits): the command receives ``repo`` and ``endpoint_url``; the passphrase options go where
    ``cli.passphrase`` reads them when a repository asks, the tuning where ``cli.repository_access`` does."""
    inner = f

    @functools.wraps(inner)
    def with_passwords(*args: Any, password_file: str | None = None, password_command: str | None = None,
                       key_file: str | None = None, storage_class: str | None = None,
                       allow_archive_class: bool = False, limit_upload: int | None = None,
                       limit_download: int | None = None, as_of: str | None = None,
                       s3_timeout: float | None = None, **kwargs: Any) -> Any:
        from cbtbackup.cli.passphrase import CURRENT, PasswordOptions
        from cbtbackup.cli.repository_access import TUNING
        from cbtbackup.model.durations import parse_when
        from cbtbackup.repo.location import StoreOptions

        CURRENT.set(PasswordOptions(password_file, password_command, key_file))
        TUNING.set(StoreOptions(storage_class=storage_class, allow_archive_class=allow_archive_class,
                                limit_upload=limit_upload * 1024 if limit_upload else None,
                                limit_download=limit_download * 1024 if limit_download else None,
                                as_of=parse_when(as_of) if as_of is not None else None, s3_timeout=s3_timeout))
        return inner(*args, **kwargs)

    f = cast(F, with_passwords)
    f = click.option("--s3-timeout", type=Seconds(min=0.1, max=3600), envvar="CBTBACKUP_S3_TIMEOUT",
                     metavar="SECONDS",
                     help="S3: how long to wait for an answer, per try (default 30; 4 tries, then one line).")(f)
    f = click.option("--as-of", metavar="TIME",
                     help="S3 with versioning (Object Lock): read the repository as it was at TIME, read-only — "
                          "the way back after someone overwrote or hid backups (docs/s3.md).")(f)
    f = click.option("--limit-download", type=click.IntRange(min=1), envvar="CBTBACKUP_LIMIT_DOWNLOAD",
                     metavar="KIB/S", help="Read from the repository at most this fast (KiB/s).")(f)
    f = click.option("--limit-upload", type=click.IntRange(min=1), envvar="CBTBACKUP_LIMIT_UPLOAD",
                     metavar="KIB/S", help="Write to the repository at most this fast (KiB/s).")(f)
    f = click.option("--allow-archive-class", is_flag=True,
                     help="Accept a --storage-class whose objects need a restore request before a read.")(f)
    f = click.option("--storage-class", envvar="CBTBACKUP_S3_STORAGE_CLASS", metavar="CLASS",
                     help="S3: the storage class of chunk objects (STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, "
                          "GLACIER_IR, or a class of the server's); others stay STANDARD.")(f)
    f = click.option("--key-file", envvar="CBTBACKUP_KEY_FILE", metavar="FILE",
                     help="Open the repository with the key file FILE (see key export) instead of a passphrase; "
                          "or set CBTBACKUP_KEY_FILE.")(f)
    f = click.option("--password-command", metavar="CMD",
                     help="Run CMD and use the first line it prints as the passphrase.")(f)
    f = click.option("--password-file", metavar="FILE",
                     help="Read the passphrase from the first line of FILE (or set CBTBACKUP_PASSWORD).")(f)
    f = click.option(
        "--endpoint-url", envvar="CBTBACKUP_S3_ENDPOINT", metavar="URL",
        help="S3-compatible endpoint (MinIO, Ceph RGW); or set CBTBACKUP_S3_ENDPOINT.",
    )(f)
    return click.option(
        "-r", "--repo", envvar="CBTBACKUP_REPO", required=True, metavar="REPO",
        help="Repository: a directory or s3://BUCKET/PREFIX (or set CBTBACKUP_REPO).",
    )(f)


def ceph_options(f: F) -> F:
    """``--ceph-conf``, ``--ceph-id``, ``--keyring``, ``--ceph-timeout``: the command receives ``ceph``, the
    cluster's options (used only where a source or target is an RBD image)."""
    inner = f

    @functools.wraps(inner)
    def with_ceph(*args: Any, ceph_conf: str | None = None, ceph_id: str | None = None,
                  keyring: str | None = None, ceph_timeout: float = 30.0, **kwargs: Any) -> Any:
        from cbtbackup.engine.rbd.cluster import CephOptions

        return inner(*args, ceph=CephOptions(ceph_conf, ceph_id, keyring, ceph_timeout), **kwargs)

    f = cast(F, with_ceph)
    f = click.option("--ceph-timeout", type=Seconds(min=1, max=3600), default=30.0,
                     envvar="CBTBACKUP_CEPH_TIMEOUT", metavar="SECONDS",
                     help="RBD: how long to wait for the Ceph cluster (default 30), then one line.")(f)
    f = click.option("--keyring", metavar="FILE", help="RBD: the cephx keyring (default: as ceph.conf says).")(f)
    f = click.option("--ceph-id", metavar="USER",
                     help="RBD: the cephx user, without 'client.' (default: admin, as the rbd command).")(f)
    return click.option("--ceph-conf", envvar="CEPH_CONF", metavar="FILE",
                        help="RBD: the cluster's ceph.conf (default: $CEPH_CONF, /etc/ceph/ceph.conf).")(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")(f)


def emit(as_json: bool, payload: dict[str, Any], lines: list[str], err: bool = False) -> None:
    """Print the result: human lines, or the JSON object as the last line of stdout (of stderr with
    ``err``, when stdout carries data)."""
    from cbtbackup.cli.output import CURRENT, echoed

    if as_json:
        click.echo(json.dumps(payload, sort_keys=True), err=err)
    elif not CURRENT.quiet:
        for line in lines:
            click.echo(line, err=err)
            echoed(line)


def warn(message: str) -> None:
    """A line on stderr that is not an error (a damaged object passed over, a fallback taken)."""
    from cbtbackup.cli.output import echoed

    click.echo(f"cbtbackup: warning: {message}", err=True)
    echoed(f"warning: {message}")


def fail(message: str, code: int, as_json: bool = False, details: dict[str, Any] | None = None) -> int:
    """One line on stderr; with ``--json`` also one JSON object on stdout, for scripts."""
    from cbtbackup.cli.output import echoed

    click.echo(f"cbtbackup: error: {message}", err=True)
    echoed(f"error: {message} (exit {code})")
    if as_json:
        click.echo(json.dumps({"error": message, "exit_code": code, **(details or {})}, sort_keys=True))
    return code


SIGTERM_GRACE = 20.0  # seconds the clean-up after SIGTERM may take before the process leaves anyway
_watchdog = {"armed": True}


def unhurried_sigterm() -> None:
    """This command's clean-up after SIGTERM may take its time (a job's snapshot hooks must be released,
    each under its own timeout): no watchdog."""
    _watchdog["armed"] = False


def _leave_after_sigterm() -> None:
    sys.stderr.write(f"cbtbackup: the clean-up did not end within {SIGTERM_GRACE:g} s of SIGTERM; leaving now\n"
                     "cbtbackup: error: terminated\n")
    sys.stderr.flush()
    os._exit(143)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A signal's exception lands between any two bytecodes of the main thread: in rare cases (once in
        # hundreds of CI runs, never reproduced alone) that left a lock a worker needed held, and the
        # clean-up waiting for that worker never ended. A service manager would SIGKILL after its timeout;
        # this does the same sooner and says so. Leaving early is safe: nothing enters a repository until
        # its manifest is written, and prune removes what a killed run left.
        if _watchdog["armed"]:
            watchdog = threading.Timer(SIGTERM_GRACE, _leave_after_sigterm)
            watchdog.daemon = True
            watchdog.start()
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command and map every error to one line on stderr and an exit code."""
    _watchdog["armed"] = True  # each command decides afresh (tests run many in one process)
    from cbtbackup.cli.output import hoist

    args = hoist(sys.argv[1:] if argv is None else list(argv))
    as_json = "--json" in args
    try:
        with _sigterm_unwinds():
            returned = cli.main(args=args, prog_name="cbtbackup", standalone_mode=False)
        if isinstance(returned, int) and returned:  # a command that ended with click.exceptions.Exit(code)
            return returned
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        return fail(e.format_message(), 2, as_json)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        if isinstance(e, Terminated) or isinstance(e.__cause__, Terminated):  # click turns it into Abort
            return fail("terminated", EXIT_TERMINATED, as_json)
        return fail("interrupted", EXIT_INTERRUPTED, as_json)
    except CbtError as e:
        return fail(str(e), e.exit_code, as_json, e.details)
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("CBTBACKUP_DEBUG"):
            import traceback  # only here: every run would pay for loading it

            traceback.print_exc()
        return fail(f"internal error: {type(e).__name__}: {e} (set CBTBACKUP_DEBUG=1 for details)", EXIT_INTERNAL,
                    as_json)
    return 0


def run() -> None:
    sys.exit(main())

"""``attach``, ``detach`` and ``status``: a tracked image served as a file (and a loop device) via FUSE."""

from __future__ import annotations

from pathlib import Path

import click

from cbtbackup.cli.app import emit, json_option
from cbtbackup.engine.attach import registry
from cbtbackup.engine.attach.client import announce_ready, detach, start_daemon, status
from cbtbackup.engine.attach.daemon import AttachOptions, Daemon
from cbtbackup.engine.attach.record import AttachRecord


def _attached_lines(record: AttachRecord) -> list[str]:
    where = f"{record.mountdir}/volume" + (f" and {record.loop}" if record.loop else "")
    return [f"attached {record.image} as {where} (pid {record.pid})"]


def _remember(options: AttachOptions) -> None:
    """Record the attach for ``track --reattach-all``; the volume is served either way."""
    try:
        registry.remember(registry.Entry(options.image, options.mountdir, options.loop, options.state_dir))
    except OSError as e:
        click.echo(f"cbtbackup: warning: {options.image} will not be attached again at boot: cannot record it in "
                   f"{registry.registry_dir()}: {e.strerror or e}", err=True)


@click.command()
@click.argument("image")
@click.argument("mountdir")
@click.option("--loop", is_flag=True, help="Also set up a loop device on the served file and print its path.")
@click.option("--foreground", is_flag=True, help="Serve in this process until detach, SIGTERM or Ctrl-C.")
@click.option("--state-dir", help="Where the tracker keeps its state, if not beside the image.")
@click.option("--ready-line", is_flag=True, hidden=True)  # used by the background start
@json_option
def attach(image: str, mountdir: str, loop: bool, foreground: bool, state_dir: str | None, ready_line: bool,
           as_json: bool) -> None:
    """Serve tracked IMAGE as MOUNTDIR/volume through the engine (tracking and COW), in the background."""
    options = AttachOptions(image=image, mountdir=mountdir, loop=loop, state_dir=state_dir)
    if not foreground:
        record = start_daemon(options)
        _remember(options)
        emit(as_json, record.__dict__, _attached_lines(record))
        return
    daemon = Daemon(options)
    daemon.prepare()

    def ready(record: AttachRecord) -> None:
        if ready_line:  # started by a background attach, which records it
            announce_ready(record, Path(record.state_dir) / "attach.log")
        else:
            _remember(options)
            emit(as_json, record.__dict__, _attached_lines(record))

    daemon.run(ready)


@click.command(name="detach")
@click.argument("mountdir")
@json_option
def detach_command(mountdir: str, as_json: bool) -> None:
    """Flush and stop serving the volume attached at MOUNTDIR: loop device, mount, tracker."""
    record = detach(mountdir)
    registry.forget(record.image)  # detached on purpose: not attached again at boot
    emit(as_json, record.__dict__, [f"detached {record.image} from {record.mountdir}"])


@click.command(name="status")
@click.argument("image")
@click.option("--state-dir", help="Where the tracker keeps its state, if not beside the image.")
@json_option
def status_command(image: str, state_dir: str | None, as_json: bool) -> None:
    """Whether IMAGE is attached, where, and its CBT state."""
    info = status(image, state_dir)
    if not info["attached"]:
        emit(as_json, info, [f"{image}: not attached"])
        return
    cbt = info["cbt"]
    emit(as_json, info, [
        f"{info['image']}: attached at {info['mountdir']}" + (f", {info['loop']}" if info["loop"] else "")
        + f" (pid {info['pid']})",
        f"generation {cbt['generation_id']} ({info['generation_reason']}), changes number "
        f"{cbt['changes_number']}, {info['dirty_blocks']} blocks changed since the last snapshot",
    ])

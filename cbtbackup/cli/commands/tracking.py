"""``track`` and ``cbt info``: the userspace engine's change tracking."""

from __future__ import annotations

import dataclasses

import click

from cbtbackup.cli.app import emit, json_option
from cbtbackup.engine import TrackedVolume
from cbtbackup.engine.attach.client import status
from cbtbackup.engine.attach.reattach import reattach_all
from cbtbackup.engine.attach.record import resolve_source
from cbtbackup.errors import CbtError, UsageError
from cbtbackup.model.sizes import format_size, parse_size

SEES_FILE = ("incrementals use CBT while every write goes through cbtbackup (attach, or the engine's API); "
             "any other write to the file is detected and the next incremental scans instead")
SEES_DEVICE = ("a block device: the userspace engine sees only writes made through 'cbtbackup attach' while it "
               "holds the device, so incrementals use CBT only between backups of one attach; otherwise they "
               "scan (the blksnap kernel module sees every write)")


@click.command()
@click.argument("image", required=False)
@click.option("--reattach-all", is_flag=True,
              help="Instead of starting to track IMAGE: attach again every image this host had attached and "
                   "not detached (what the boot unit runs; see docs/attach.md).")
@click.option("--block-size", help="Tracking block size (default: 64KiB, larger for volumes over 128GiB).")
@click.option("--state-dir", help="Where to keep the tracker state (default: IMAGE.cbt beside the image).")
@click.option("--durable", is_flag=True,
              help="Sync map pages before the data they describe (kept for scripts: any unclean stop now starts a "
                   "new generation, so it no longer changes what a backup trusts).")
@json_option
def track(image: str | None, reattach_all: bool, block_size: str | None, state_dir: str | None, durable: bool,
          as_json: bool) -> None:
    """Start change tracking of IMAGE with the userspace engine (or --reattach-all at boot)."""
    if reattach_all:
        if image is not None or block_size or state_dir or durable:
            raise UsageError("--reattach-all takes no IMAGE and no other option: it attaches what was attached")
        _reattach_all(as_json)
        return
    if image is None:
        raise UsageError("say which IMAGE to track (or --reattach-all)")
    bs = parse_size(block_size) if block_size is not None else None
    with TrackedVolume.track(image, bs, state_dir=state_dir, durable=durable) as vol:
        info = vol.cbt_info()
        state = str(vol.state_dir)
        sees = SEES_FILE if vol.is_file else SEES_DEVICE
    emit(as_json, {"image": image, "state_dir": state, "generation_id": str(info.generation_id),
                   "block_size": info.block_size, "block_count": info.block_count, "sees": sees},
         [f"tracking {image}: {info.block_count} blocks of {format_size(info.block_size)}, state in {state}",
          sees])


def _reattach_all(as_json: bool) -> None:
    outcomes, bad = reattach_all()
    failed = [o for o in outcomes if o.state == "failed"]
    payload = {"images": [dataclasses.asdict(o) for o in outcomes], "unreadable": bad}
    lines = [o.line() for o in outcomes if o.state != "failed"]
    if failed or bad:
        for line in lines if not as_json else []:
            click.echo(line)
        for line in [o.line() for o in failed] + bad if not as_json else []:
            click.echo(f"cbtbackup: {line}", err=True)
        raise CbtError(f"{len(failed) + len(bad)} of {len(outcomes) + len(bad)} recorded images not re-attached",
                       details=payload)
    emit(as_json, payload, lines or ["no image to re-attach"])


@click.group()
def cbt() -> None:
    """Changed block tracking."""


@cbt.command()
@click.argument("source")
@click.option("--state-dir", help="Where the tracker keeps its state, if not beside the image.")
@json_option
def info(source: str, state_dir: str | None, as_json: bool) -> None:
    """Generation, changes number, block size and count, and blocks changed since the last snapshot."""
    resolved = resolve_source(source, state_dir)
    attached = status(str(resolved.image), str(resolved.state_dir))
    if attached["attached"]:  # the daemon holds the volume: ask it
        cbt, dirty, reason = attached["cbt"], attached["dirty_blocks"], attached["generation_reason"]
    else:
        with TrackedVolume.open(source, state_dir=state_dir) as vol:
            cbt = vol.cbt_info().to_dict()
            dirty = vol.blocks_changed_since_take()
            reason = vol.reset_reason
    payload = {"source": source, **cbt, "dirty_blocks": dirty, "generation_reason": reason}
    emit(as_json, payload, [
        f"source:          {source}",
        f"capacity:        {cbt['device_capacity']} bytes ({format_size(cbt['device_capacity'])})",
        f"block size:      {format_size(cbt['block_size'])} x {cbt['block_count']} blocks",
        f"generation:      {cbt['generation_id']} ({reason})",
        f"changes number:  {cbt['changes_number']}",
        f"changed blocks:  {dirty} since the last snapshot",
    ])

"""``blksnap status`` and ``blksnap detach``: the kernel module's state, and removing its filter."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from cbtbackup.cli.app import emit, json_option
from cbtbackup.engine.blksnap.kernel import BlksnapModule, BlockDevice, current_environment
from cbtbackup.errors import NotFoundError


@click.group()
def blksnap() -> None:
    """The blksnap kernel module (hosts that have it)."""


@blksnap.command()
@click.argument("devices", nargs=-1)
@json_option
def status(devices: tuple[str, ...], as_json: bool) -> None:
    """Module version, snapshots, and for each DEVICE its filter and CBT state."""
    env = current_environment()
    module = BlksnapModule.open(env)
    try:
        version = module.version()
        snapshots = [str(s) for s in module.snapshot_collect()]
    finally:
        module.close()
    rows: list[dict[str, Any]] = []
    for path in devices:
        dev = BlockDevice(env, path)
        try:
            row: dict[str, Any] = {"device": path, "filter": dev.attached_filter()}
            with contextlib.suppress(NotFoundError):  # no blksnap filter: nothing more to say
                row.update(dev.cbt_info().to_dict())
            rows.append(row)
        finally:
            dev.close()
    lines = [f"blksnap {'.'.join(map(str, version))}, {len(snapshots)} snapshot(s)" +
             (": " + ", ".join(snapshots) if snapshots else "")]
    for row in rows:
        if "generation_id" in row:
            lines.append(f"{row['device']}: filter {row['filter'] or 'blksnap'}, generation {row['generation_id']}, "
                         f"changes number {row['changes_number']}, {row['block_count']} blocks of "
                         f"{row['block_size']} bytes")
        else:
            lines.append(f"{row['device']}: no blksnap filter attached")
    emit(as_json, {"version": list(version), "snapshots": snapshots, "devices": rows}, lines)


@blksnap.command()
@click.argument("device")
@json_option
def detach(device: str, as_json: bool) -> None:
    """Detach the blksnap filter from DEVICE: tracking stops and its CBT map is forgotten."""
    env = current_environment()
    BlksnapModule.open(env).close()  # a clear message when the module is missing
    dev = BlockDevice(env, device)
    try:
        dev.detach_filter()
    finally:
        dev.close()
    emit(as_json, {"device": device, "detached": True}, [f"detached the blksnap filter from {device}"])

"""``blksnap status`` and ``blksnap detach``: the kernel module's state, and removing its filter."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from cbtbackup.cli.app import emit, json_option
from cbtbackup.engine.blksnap.kernel import BlksnapModule, current_environment
from cbtbackup.engine.blksnap.ownership import owner_of
from cbtbackup.errors import NotFoundError


@click.group()
def blksnap() -> None:
    """The blksnap kernel module (hosts that have it)."""


@blksnap.command()
@click.argument("devices", nargs=-1)
@json_option
def status(devices: tuple[str, ...], as_json: bool) -> None:
    """Which module build and version, its snapshots, and for each DEVICE its filter and CBT state."""
    env = current_environment()
    module = BlksnapModule.open(env)
    try:
        version = module.version()
        build = module.build()
        snapshots: list[dict[str, Any]] = []
        for snap_id in module.snapshot_collect():
            owner = owner_of(env.run_dir, snap_id)
            snapshots.append({"id": str(snap_id), "owner": None if owner is None else {
                "pid": owner.pid, "devices": list(owner.devices), "running": owner.alive()}})
        rows: list[dict[str, Any]] = []
        for path in devices:
            dev = module.device(path)
            try:
                row: dict[str, Any] = {"device": path, "filter": dev.attached_filter()}
                with contextlib.suppress(NotFoundError):  # no blksnap filter: nothing more to say
                    row.update(dev.cbt_info().to_dict())
                rows.append(row)
            finally:
                dev.close()
    finally:
        module.close()
    build_text = f", build {build[0]!r} flags {build[1]:#x}" if build else ""
    lines = [f"{module.dialect.name} {'.'.join(map(str, version))}{build_text}, {len(snapshots)} snapshot(s)"]
    for snap in snapshots:
        owner = snap["owner"]
        lines.append(f"  snapshot {snap['id']}: " + (
            "not cbtbackup's" if owner is None else
            f"cbtbackup pid {owner['pid']} ({', '.join(owner['devices'])}), " +
            ("running" if owner["running"] else "killed: the next backup destroys it")))
    for row in rows:
        if "generation_id" in row:
            lines.append(f"{row['device']}: filter {row['filter'] or 'blksnap'}, generation {row['generation_id']}, "
                         f"changes number {row['changes_number']}, {row['block_count']} blocks of "
                         f"{row['block_size']} bytes")
        else:
            lines.append(f"{row['device']}: no blksnap filter attached")
    emit(as_json, {"module": module.dialect.name, "version": list(version),
                   "build": None if build is None else {"name": build[0], "flags": build[1]},
                   "snapshots": snapshots, "devices": rows}, lines)


@blksnap.command()
@click.argument("device")
@json_option
def detach(device: str, as_json: bool) -> None:
    """Detach the blksnap filter from DEVICE: tracking stops and its CBT map is forgotten."""
    module = BlksnapModule.open(current_environment())  # a clear message when the module is missing
    try:
        dev = module.device(device)
        try:
            dev.detach_filter()
        finally:
            dev.close()
    finally:
        module.close()
    emit(as_json, {"device": device, "detached": True}, [f"detached the blksnap filter from {device}"])

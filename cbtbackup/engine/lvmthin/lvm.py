"""The LVM commands the lvmthin provider runs, with their reports read as JSON and their failures as one line.

Everything goes through the ``lvm`` tools (lvs, lvcreate, lvchange, lvremove), ``dmsetup`` for the pool's
metadata snapshot and ``thin_delta`` from thin-provisioning-tools; none of them has a stable library
interface, and these are what an administrator would run by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

from cbtbackup.errors import CbtError, NotFoundError, SnapshotFailedError, UsageError

TIMEOUT = 120.0  # seconds for one LVM command; a hung one must not hang a timer


class LvmError(SnapshotFailedError):
    """An LVM command failed; the message is its own last line."""


@dataclasses.dataclass(frozen=True)
class LogicalVolume:
    vg: str
    name: str
    uuid: str
    vg_uuid: str
    size: int
    attr: str
    pool: str
    origin: str
    thin_id: int | None

    @property
    def is_thin(self) -> bool:
        return self.attr.startswith("V") and bool(self.pool)

    @property
    def path(self) -> str:
        return f"/dev/{self.vg}/{self.name}"


_FIELDS = "vg_name,lv_name,lv_uuid,vg_uuid,lv_size,lv_attr,pool_lv,origin,thin_id"


def _environment() -> dict[str, str]:
    return {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}


def run(*args: str, what: str) -> str:
    """Run an LVM (or dmsetup, thin_delta) command; its output, or one line with its complaint."""
    if shutil.which(args[0]) is None:
        package = "thin-provisioning-tools" if args[0] == "thin_delta" else "lvm2"
        raise NotFoundError(f"{args[0]} is not installed (Debian: {package}); it is needed to {what}")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, env=_environment())
    except subprocess.TimeoutExpired:
        raise LvmError(f"cannot {what}: {args[0]} did not answer in {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()
                 and not line.strip().startswith("WARNING")]
        raise LvmError(f"cannot {what}: {lines[-1] if lines else f'{args[0]} exited {done.returncode}'}")
    return done.stdout


def volumes(vg: str) -> list[LogicalVolume]:
    """Every logical volume of ``vg``."""
    try:
        out = run("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _FIELDS, vg,
                  what=f"list the logical volumes of {vg}")
    except LvmError as e:
        if "not found" in str(e) or "does not exist" in str(e):
            raise NotFoundError(f"no volume group {vg!r} ({e})") from None
        raise
    rows = json.loads(out)["report"][0]["lv"]
    return [LogicalVolume(r["vg_name"], r["lv_name"], r["lv_uuid"], r["vg_uuid"], int(r["lv_size"] or 0),
                          r["lv_attr"], r["pool_lv"], r["origin"], int(r["thin_id"]) if r["thin_id"] else None)
            for r in rows]


def volume(vg: str, name: str) -> LogicalVolume:
    found = next((v for v in volumes(vg) if v.name == name), None)
    if found is None:
        raise NotFoundError(f"no logical volume {vg}/{name}")
    return found


def dm_name(vg: str, lv: str) -> str:
    """The device-mapper name LVM gives ``vg/lv`` (dashes inside a name are doubled)."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def split_device(path: str) -> tuple[str, str]:
    """``/dev/VG/LV`` → (VG, LV); anything else is not an LV path."""
    parts = Path(path).parts
    if len(parts) != 4 or parts[:2] != ("/", "dev") or parts[2] in ("mapper", "disk", "loop"):
        raise UsageError(f"{path}: an LVM thin volume is named /dev/VG/LV")
    return parts[2], parts[3]


def looks_like_lv(path: str) -> bool:
    try:
        vg, _ = split_device(path)
    except UsageError:
        return False
    return Path(path).is_block_device() and Path(f"/dev/{vg}").is_dir() and shutil.which("lvs") is not None


def is_thin_lv(path: str) -> bool:
    """Whether ``path`` is an LVM thin volume (asked of lvs only for paths that look like one)."""
    if not looks_like_lv(path):
        return False
    vg, name = split_device(path)
    try:
        return volume(vg, name).is_thin
    except CbtError:
        return False

"""Providers: where snapshots and changed blocks come from (userspace engine — direct or through an attach
daemon —, the blksnap kernel module, QEMU's dirty bitmaps, Ceph RBD snapshot diffs, LVM thin snapshots and
``thin_delta``, and scan).

The blksnap, QEMU and RBD providers live in their own packages and build on ``providers.base``; they are
imported when first asked for (PEP 562), so that importing one of them first never finds this package
half made."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbtbackup.engine.attach.record import live_record, resolve_source
from cbtbackup.engine.blksnap.kernel import current_environment, module_loaded
from cbtbackup.engine.lvmthin.lvm import is_thin_lv
from cbtbackup.engine.providers.attached import AttachedProvider
from cbtbackup.engine.providers.base import BlockReader, CbtState, Provider, SnapshotSession
from cbtbackup.engine.providers.scan import ScanProvider
from cbtbackup.engine.providers.userspace import UserspaceProvider
from cbtbackup.engine.qemu.images import is_qcow2
from cbtbackup.engine.rbd.names import is_rbd
from cbtbackup.engine.volume import is_tracked
from cbtbackup.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from cbtbackup.engine.blksnap.provider import BlksnapProvider
    from cbtbackup.engine.qemu.provider import QemuProvider, QemuSession
    from cbtbackup.engine.rbd.cluster import CephOptions
    from cbtbackup.engine.rbd.provider import RbdProvider

_LATER = {"BlksnapProvider": "cbtbackup.engine.blksnap.provider", "QemuProvider": "cbtbackup.engine.qemu.provider",
          "QemuSession": "cbtbackup.engine.qemu.provider", "RbdProvider": "cbtbackup.engine.rbd.provider"}


def __getattr__(name: str) -> Any:
    if name in _LATER:
        return getattr(importlib.import_module(_LATER[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

PROVIDERS = ("auto", "userspace", "blksnap", "qemu", "rbd", "lvmthin", "scan")


def choose_provider(
    source: str | os.PathLike[str],
    name: str = "auto",
    *,
    state_dir: str | os.PathLike[str] | None = None,
    freeze: str | None = None,
    diff_storage: str | None = None,
    diff_storage_limit: int | None = None,
    notice: Callable[[str], None] | None = None,
    qmp: str | None = None,
    device: str | None = None,
    ceph: CephOptions | None = None,
) -> Provider:
    """``auto``: RBD for ``rbd:POOL/IMAGE``, the attach daemon of an attached volume, the engine for a
    tracked one, QEMU for a qcow2 image (or with ``qmp``), the blksnap module for a block device on a host
    that has it, scan otherwise.

    An LVM thin volume (``/dev/VG/LV``) goes through its pool's snapshots before blksnap is considered.
    ``source`` may be the image or the loop device an attach set up on it.
    """
    if name not in PROVIDERS:
        raise UsageError(f"unknown provider {name!r} (one of: {', '.join(PROVIDERS)})")
    if is_rbd(str(source)) or name == "rbd":
        if name not in ("auto", "rbd") or not is_rbd(str(source)):
            raise UsageError(f"the rbd provider backs up RBD images (rbd:POOL/IMAGE), and an RBD image only "
                             f"the rbd provider; got {source} with --provider {name}")
        if freeze is not None or qmp is not None or device is not None:
            raise UsageError("--freeze, --qmp and --device are not for RBD images")
        from cbtbackup.engine.rbd.provider import RbdProvider
        return RbdProvider(str(source), ceph, notice=notice)
    if not os.path.exists(source):
        raise NotFoundError(f"{source}: no such file or device")
    resolved = resolve_source(source, state_dir)
    if name in ("auto", "userspace") and live_record(resolved.state_dir) is not None:
        return AttachedProvider(resolved.image, resolved.state_dir, freeze)
    if name == "auto":
        if qmp is not None or is_qcow2(source):
            name = "qemu"
        elif is_tracked(source, state_dir):
            name = "userspace"
        elif is_thin_lv(str(source)):
            name = "lvmthin"
        elif Path(source).is_block_device() and module_loaded(current_environment()):
            name = "blksnap"
        else:
            name = "scan"
    if freeze is not None and name == "lvmthin":
        raise UsageError("--freeze is not for LVM thin volumes: LVM suspends the volume for the instant of "
                         "the snapshot; quiesce applications with a before_snapshot hook")
    if freeze is not None and name != "blksnap":
        raise UsageError("--freeze needs a volume attached with 'cbtbackup attach' or the blksnap provider")
    if (qmp is not None or device is not None) and name != "qemu":
        raise UsageError("--qmp and --device are for the qemu provider")
    if name == "qemu":
        from cbtbackup.engine.qemu.provider import QemuProvider
        return QemuProvider(str(source), qmp, device, notice=notice)
    if name == "lvmthin":
        from cbtbackup.engine.lvmthin.provider import LvmThinProvider
        return LvmThinProvider(str(source), notice=notice)
    if name == "userspace":
        return UserspaceProvider(source, state_dir=state_dir)
    if name == "blksnap":
        from cbtbackup.engine.blksnap.provider import BlksnapProvider
        return BlksnapProvider([str(source)], diff_storage, diff_storage_limit, freeze=freeze, notice=notice)
    return ScanProvider(source)


def blksnap_group(
    devices: list[str],
    diff_storage: str | None,
    diff_storage_limit: int | None,
    *,
    freeze: str | None = None,
    notice: Callable[[str], None] | None = None,
) -> BlksnapProvider:
    """The blksnap provider for several block devices in one snapshot."""
    from cbtbackup.engine.blksnap.provider import BlksnapProvider
    return BlksnapProvider(devices, diff_storage, diff_storage_limit, freeze=freeze, notice=notice)


__all__ = [
    "PROVIDERS",
    "AttachedProvider",
    "BlksnapProvider",
    "BlockReader",
    "CbtState",
    "Provider",
    "QemuProvider",
    "QemuSession",
    "RbdProvider",
    "ScanProvider",
    "SnapshotSession",
    "UserspaceProvider",
    "blksnap_group",
    "choose_provider",
]

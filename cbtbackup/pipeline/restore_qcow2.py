"""Restores to qcow2: the image is restored raw (sparse) beside the target, then converted by ``qemu-img``.

A new target appears only when whole (converted under a temporary name, then renamed). ``--force`` or
``--onto-existing`` on an existing qcow2 image writes the restored image into it with ``qemu-img convert -n``:
the image keeps its identity and its persistent bitmaps, which record the restore as writes, so the next
backup of it through QEMU stays correct. An image a VM has open is refused by QEMU's image lock.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from cbtbackup.engine.qemu.images import convert_to_qcow2, is_qcow2, virtual_size
from cbtbackup.errors import UsageError
from cbtbackup.pipeline.progress import Progress
from cbtbackup.pipeline.restore import RestoreOptions, RestoreResult, run_restore
from cbtbackup.pipeline.workers import PipelineConfig
from cbtbackup.repo.repository import Repository


def run_restore_qcow2(repo: Repository, options: RestoreOptions, progress: Progress | None = None,
                      config: PipelineConfig | None = None) -> RestoreResult:
    target = Path(options.target)
    existing = os.path.lexists(target)
    if existing and not (options.force or options.onto_existing):
        raise UsageError(f"{target} exists; add --force to write the backup into it")
    if existing and not is_qcow2(target):
        raise UsageError(f"{target} is not a qcow2 image: restore --format qcow2 writes into qcow2 images only")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} is not a directory")
    with tempfile.TemporaryDirectory(prefix=".cbtbackup-restore-", dir=target.parent) as work:
        raw = Path(work) / "image.raw"
        result = run_restore(repo, dataclasses.replace(options, target=str(raw), force=False, onto_existing=False),
                             progress, config)
        if existing:
            if virtual_size(target) < result.manifest.device_size:
                raise UsageError(f"{target} is smaller than the backup ({result.manifest.device_size} bytes)")
            convert_to_qcow2(raw, target, into_existing=True)
        else:
            fresh = Path(work) / "image.qcow2"
            convert_to_qcow2(raw, fresh, into_existing=False)
            os.link(fresh, target)  # fails rather than replace anything that appeared meanwhile
    return dataclasses.replace(result, target=str(target))

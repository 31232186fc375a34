"""``full`` and ``incr``."""

from __future__ import annotations

from typing import Literal

import click

from cbtbackup.cli.app import ceph_options, emit, json_option, repo_option
from cbtbackup.cli.progress_bar import make_progress
from cbtbackup.cli.repository_access import open_repo
from cbtbackup.engine.providers import PROVIDERS
from cbtbackup.engine.rbd.cluster import CephOptions
from cbtbackup.errors import UsageError
from cbtbackup.model.durations import parse_wait
from cbtbackup.model.sizes import format_size, parse_size
from cbtbackup.pipeline.backup import BackupOptions, run_backup, run_group_backup
from cbtbackup.pipeline.tracking_check import UnchangedSample


def _backup(repo: str, endpoint_url: str | None, sources: tuple[str, ...], kind: Literal["full", "incr"],
            name: str | None, provider: str, state_dir: str | None, freeze: str | None, diff_storage: str | None,
            diff_storage_limit: str | None, rename_source: bool, wait_lock: str | None, synthetic_every: int | None,
            qmp: str | None, device: tuple[str, ...], ceph: CephOptions, verify_unchanged: str | None,
            since: str | None, keep_base: bool, as_json: bool) -> None:
    sample = UnchangedSample.parse(verify_unchanged) if verify_unchanged is not None else UnchangedSample()
    options = BackupOptions(source=sources[0], kind=kind, name=name, provider=provider, state_dir=state_dir,
                            freeze=freeze, diff_storage=diff_storage,
                            diff_storage_limit=None if diff_storage_limit is None else parse_size(diff_storage_limit),
                            rename_source=rename_source,
                            wait_lock=0.0 if wait_lock is None else parse_wait(wait_lock),
                            synthetic_full_every=synthetic_every or 0, qmp=qmp,
                            device=device[0] if len(sources) == 1 and len(device) == 1 else None,
                            devices=device if len(sources) > 1 else (), ceph=ceph,
                            unchanged_sample=sample, since=since, keep_base=keep_base)
    if since is not None and not since.strip():
        raise UsageError("--since takes a backup of the chain (an id) or 'full'")
    if len(sources) == 1 and len(device) > 1:
        raise UsageError("one SOURCE, one --device")
    repository = open_repo(repo, endpoint_url, backs_up=True)
    if len(sources) == 1:
        results = [run_backup(repository, options, make_progress())]
    else:
        results = run_group_backup(repository, options, list(sources), make_progress())
    lines = []
    for result in results:
        m, s = result.manifest, result.manifest.stats
        how = "full" if m.kind == "full" else f"incr by {m.method}"
        changed = "" if m.kind == "full" else f", {format_size(s.bytes_changed)} changed"  # a full: all of it
        lines.append(f"backup {m.ref.id} ({m.ref.name}): {how}, {format_size(s.bytes_scanned)} read{changed}, "
                     f"{format_size(s.bytes_stored)} stored ({s.chunks_new} new chunks, {s.chunks_reused} reused) "
                     f"in {s.duration_s:.2f} s")
    payload = results[0].to_json() if len(results) == 1 else {"backups": [r.to_json() for r in results]}
    emit(as_json, payload, lines)


def _backup_command(kind: Literal["full", "incr"], doc: str) -> click.Command:
    @click.command(name=kind, help=doc)
    @repo_option
    @click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
    @click.option("--name", help="The backup chain's name (default: made from the source's path and the host).")
    @click.option("--rename-source", is_flag=True,
                  help="Let --name's chain continue with this source although it holds another source's backups.")
    @click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
                  help="userspace: a tracked image; blksnap: a block device through the kernel module; "
                       "qemu: a qcow2 image through QEMU's dirty bitmaps; rbd: a Ceph RBD image "
                       "(rbd:POOL/IMAGE) through RBD snapshot diffs; lvmthin: an LVM thin volume (/dev/VG/LV) through "
                       "thin snapshots and thin_delta; "
                       "scan: read everything; auto: the first that applies.")
    @click.option("--state-dir", help="Where the tracker keeps its state, if not beside the image.")
    @click.option("--freeze", metavar="MOUNTPOINT",
                  help="Freeze the file system mounted here around the snapshot (an attached volume, or "
                       "blksnap: checked; the module freezes file systems on the devices itself).")
    @click.option("--diff-storage", metavar="PATH",
                  help="blksnap: where the module keeps old chunks (a directory, file or device; default /var/tmp).")
    @click.option("--diff-storage-limit", metavar="SIZE",
                  help="blksnap: the most the difference storage may grow to (default: a tenth of the devices).")
    @click.option("--wait-lock", metavar="DURATION",
                  help="Wait up to this long (30s, 5m, 1h) for another writer of the chain, or a prune.")
    @click.option("--synthetic-full-every", "synthetic_every", type=click.IntRange(min=1), default=None, metavar="N",
                  hidden=kind == "full",
                  help="After the backup, write a synthetic full once the chain holds N incrementals.")
    @click.option("--qmp", metavar="SOCKET",
                  help="qemu: the QMP socket of the VM that runs SOURCE (default: an offline image).")
    @click.option("--device", metavar="NODE", multiple=True,
                  help="qemu: the node name (or drive name) of SOURCE in that VM; once per SOURCE for several "
                       "disks of the VM at one instant.")
    @click.option("--verify-unchanged", metavar="SAMPLE", hidden=kind == "full",
                  help="A CBT incremental first re-reads this much of what the tracking reports unchanged and "
                       "compares it with the previous backup; a difference makes it a scan and resets the "
                       "tracking. A size (4MiB), a share (0.1%) or 0 for off "
                       f"(default: {UnchangedSample()}).")
    @click.option("--since", metavar="BACKUP", hidden=kind == "full",
                  help="A differential: store the changes since this earlier backup of the chain (an id, or "
                       "'full' for the chain's last full) and make it the new backup's parent.")
    @click.option("--keep-base", is_flag=True,
                  help="qemu, rbd, lvmthin: keep the dirty bitmap or snapshot a later 'incr --since' this backup needs "
                       "(one per chain: the newest such backup). Other providers need no flag.")
    @ceph_options
    @json_option
    def command(repo: str, endpoint_url: str | None, sources: tuple[str, ...], name: str | None, provider: str,
                state_dir: str | None, freeze: str | None, diff_storage: str | None,
                diff_storage_limit: str | None, rename_source: bool, wait_lock: str | None, synthetic_every: int | None,
                qmp: str | None, device: tuple[str, ...], ceph: CephOptions, verify_unchanged: str | None,
                since: str | None, keep_base: bool, as_json: bool) -> None:
        _backup(repo, endpoint_url, sources, kind, name, provider, state_dir, freeze, diff_storage,
                diff_storage_limit, rename_source, wait_lock, synthetic_every, qmp, device, ceph,
                verify_unchanged, since, keep_base, as_json)

    return command


full = _backup_command(
    "full", "Back up the whole of SOURCE (an image file, block device or rbd:POOL/IMAGE; several block devices "
    "with blksnap)."
)
incr = _backup_command(
    "incr",
    "Back up what changed in SOURCE since its previous backup: by CBT when it can be trusted, "
    "otherwise by a scan (or a full when there is no previous backup).",
)

"""The ABI module against the C layouts of the spec and an independent _IOC computation."""

from __future__ import annotations

import ctypes

import pytest

from cbtbackup.engine.blksnap import abi
from cbtbackup.errors import UsageError

# (structure, size, {field: offset}) as the C compiler lays them out on LP64 (natural alignment).
LAYOUTS = [
    (abi.blkfilter_attach, 48, {"name": 0, "opt": 32, "optlen": 40}),
    (abi.blkfilter_detach, 32, {"name": 0}),
    (abi.blkfilter_ctl, 48, {"name": 0, "cmd": 32, "optlen": 36, "opt": 40}),
    (abi.blksnap_cbtinfo, 40, {"device_capacity": 0, "block_size": 8, "block_count": 12, "generation_id": 16,
                              "changes_number": 32}),
    (abi.blksnap_cbtmap, 16, {"offset": 0, "length": 4, "buffer": 8}),
    (abi.blksnap_sectors, 16, {"offset": 0, "count": 8}),
    (abi.blksnap_cbtdirty, 16, {"count": 0, "dirty_sectors": 8}),
    (abi.blksnap_snapshotadd, 16, {"id": 0}),
    (abi.blksnap_snapshotinfo, 36, {"error_code": 0, "image": 4}),
    (abi.blksnap_version, 8, {"major": 0, "minor": 2, "revision": 4, "build": 6}),
    (abi.blksnap_snapshot_create, 32, {"diff_storage_limit_sect": 0, "diff_storage_filename": 8, "id": 16}),
    (abi.blksnap_snapshot_collect, 16, {"count": 0, "ids": 8}),
    (abi.blksnap_snapshot_event, 4096, {"id": 0, "timeout_ms": 16, "code": 20, "time_label": 24, "data": 32}),
    (abi.blksnap_event_corrupted, 12, {"dev_id_mj": 0, "dev_id_mn": 4, "err_code": 8}),
    (abi.blksnap_event_no_space, 8, {"requested_nr_sect": 0}),
    (abi.blksnap_uuid, 16, {"b": 0}),
]


@pytest.mark.parametrize(("struct", "size", "offsets"), LAYOUTS, ids=[s.__name__ for s, _, _ in LAYOUTS])
def test_structure_layout(struct: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(struct) == size
    assert {name: getattr(struct, name).offset for name in offsets} == offsets
    assert [f[0] for f in struct._fields_] == list(offsets)  # no field missing, none extra


def ioc(direction: str, type_: int, nr: int, size: int) -> int:
    """The generic Linux _IOC, written out again: dir in bits 30-31, size 16-29, type 8-15, nr 0-7."""
    bits = {"": 0, "W": 1, "R": 2, "RW": 3}[direction]
    return bits << 30 | size << 16 | type_ << 8 | nr


@pytest.mark.parametrize(("name", "expected"), [
    ("BLKFILTER_ATTACH", ioc("RW", 0x12, 142, 48)),
    ("BLKFILTER_DETACH", ioc("RW", 0x12, 143, 32)),
    ("BLKFILTER_CTL", ioc("RW", 0x12, 144, 48)),
    ("IOCTL_BLKSNAP_VERSION", ioc("R", ord("V"), 0, 8)),
    ("IOCTL_BLKSNAP_SNAPSHOT_CREATE", ioc("RW", ord("V"), 1, 32)),
    ("IOCTL_BLKSNAP_SNAPSHOT_DESTROY", ioc("W", ord("V"), 2, 16)),
    ("IOCTL_BLKSNAP_SNAPSHOT_TAKE", ioc("W", ord("V"), 3, 16)),
    ("IOCTL_BLKSNAP_SNAPSHOT_COLLECT", ioc("R", ord("V"), 4, 16)),
    ("IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT", ioc("R", ord("V"), 5, 4096)),
])
def test_request_numbers(name: str, expected: int) -> None:
    assert getattr(abi, name) == expected


def test_known_values() -> None:
    assert abi.BLKFILTER_ATTACH == 0xC030128E
    assert abi.IOCTL_BLKSNAP_VERSION == 0x80085600
    assert [c.value for c in abi.BlkfilterCtl] == [0, 1, 2, 3, 4]
    assert (abi.BlksnapEvent.CORRUPTED, abi.BlksnapEvent.NO_SPACE) == (0, 1)


def test_other_architectures_are_refused() -> None:
    abi.check_architecture("x86_64")
    abi.check_architecture("aarch64")
    with pytest.raises(UsageError, match="x86-64 and arm64 only, not ppc64le"):
        abi.check_architecture("ppc64le")

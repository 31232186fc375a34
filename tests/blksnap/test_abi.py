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


# Veeam's standalone 7.x: the filter requests and 7.x-only requests, as a probe of the real module found them.
STANDALONE_LAYOUTS = [
    (abi.bdevfilter_name, 40, {"devpath": 0, "name": 8}),
    (abi.bdevfilter_ctl, 56, {"devpath": 0, "name": 8, "cmd": 40, "optlen": 44, "opt": 48}),
    (abi.blksnap_mod, 40, {"compatibility_flags": 0, "name": 8}),
    (abi.blksnap_snapshot_append_storage, 40, {"id": 0, "devpath": 16, "count": 24, "ranges": 32}),
]


@pytest.mark.parametrize(("struct", "size", "offsets"), STANDALONE_LAYOUTS,
                         ids=[s.__name__ for s, _, _ in STANDALONE_LAYOUTS])
def test_standalone_structure_layout(struct: type[ctypes.Structure], size: int, offsets: dict[str, int]) -> None:
    test_structure_layout(struct, size, offsets)


def test_standalone_request_numbers_as_observed() -> None:
    assert abi.STANDALONE.attach.number == 0xC028468C == ioc("RW", ord("F"), 140, 40)
    assert abi.STANDALONE.detach.number == 0xC028468D == ioc("RW", ord("F"), 141, 40)
    assert abi.STANDALONE.ctl.number == 0xC038468E == ioc("RW", ord("F"), 142, 56)
    assert ioc("R", ord("V"), 32, 40) == abi.IOCTL_BLKSNAP_MOD
    assert ioc("W", ord("V"), 34, 40) == abi.IOCTL_BLKSNAP_SNAPSHOT_APPEND_STORAGE


def test_the_dialects_differ_only_where_the_modules_do() -> None:
    up, sa = abi.UPSTREAM, abi.STANDALONE
    assert (up.control_device, up.filter_device, up.version_major) == ("blksnap-control", None, 2)
    assert (sa.control_device, sa.filter_device, sa.version_major) == ("veeamblksnap", "bdevfilter", 7)
    assert up.attach.number == abi.BLKFILTER_ATTACH and up.ctl.struct is abi.blkfilter_ctl
    assert (up.sysfs_filter, sa.sysfs_filter) == (True, False)
    assert (up.mod_request, sa.mod_request) == (None, abi.IOCTL_BLKSNAP_MOD)

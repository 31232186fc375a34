"""The blksnap kernel ABIs: request numbers, one ctypes structure per C structure, codes — and, as data, the
two dialects cbtbackup speaks (:data:`UPSTREAM` 2.0 and Veeam's :data:`STANDALONE` 7.x).

The two share the control requests (``'V'`` 0 to 5), the CTL commands and every structure behind them; they
differ only in where filter requests go and how they name the device, the device names, the version and
the meaning of event 1. Those differences live in one :class:`Dialect` each, at the end of this module.

Request numbers use the kernel's generic ``_IOC`` encoding, which x86-64 and arm64 share:
``dir << 30 | size << 16 | type << 8 | nr`` with ``_IOC_WRITE = 1`` and ``_IOC_READ = 2``. Other
architectures lay the bits out differently and are refused. All structures are naturally aligned (LP64);
pointers travel as ``u64``. Names follow the C header so the two can be read side by side.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import platform

from cbtbackup.errors import UsageError

SUPPORTED_MACHINES = ("x86_64", "amd64", "aarch64", "arm64")

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def check_architecture(machine: str | None = None) -> None:
    machine = machine or platform.machine()
    if machine.lower() not in SUPPORTED_MACHINES:
        raise UsageError(f"the blksnap ABI is encoded here for x86-64 and arm64 only, not {machine}")


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument of {size} bytes does not fit the size field")
    return (direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)


def _IOR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type[ctypes.Structure]) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


# -- structures ---------------------------------------------------------------------------------------------

u8, u16, u32, u64, s32, s64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int32, \
    ctypes.c_int64
UUID = u8 * 16
FILTER_NAME = u8 * 32


class blksnap_uuid(ctypes.Structure):
    _fields_ = [("b", UUID)]


# upstream 2.0: filter requests go to the block device's own descriptor
class blkfilter_attach(ctypes.Structure):
    _fields_ = [("name", FILTER_NAME), ("opt", u64), ("optlen", u32)]


class blkfilter_detach(ctypes.Structure):
    _fields_ = [("name", FILTER_NAME)]


class blkfilter_ctl(ctypes.Structure):
    _fields_ = [("name", FILTER_NAME), ("cmd", u32), ("optlen", u32), ("opt", u64)]


# standalone 7.x: filter requests go to /dev/bdevfilter and name the device by a path (``u64`` pointer)
class bdevfilter_name(ctypes.Structure):
    _fields_ = [("devpath", u64), ("name", FILTER_NAME)]


class bdevfilter_ctl(ctypes.Structure):
    _fields_ = [("devpath", u64), ("name", FILTER_NAME), ("cmd", u32), ("optlen", u32), ("opt", u64)]


class blksnap_mod(ctypes.Structure):
    """7.x only: the module's build name (``standalone``) and compatibility flags."""

    _fields_ = [("compatibility_flags", u64), ("name", FILTER_NAME)]


class blksnap_snapshot_append_storage(ctypes.Structure):
    """7.x only; cbtbackup does not send it (docs/blksnap.md says why)."""

    _fields_ = [("id", UUID), ("devpath", u64), ("count", u32), ("ranges", u64)]


class blksnap_cbtinfo(ctypes.Structure):
    _fields_ = [("device_capacity", u64), ("block_size", u32), ("block_count", u32),
                ("generation_id", UUID), ("changes_number", u8)]


class blksnap_cbtmap(ctypes.Structure):
    _fields_ = [("offset", u32), ("length", u32), ("buffer", u64)]


class blksnap_sectors(ctypes.Structure):
    _fields_ = [("offset", u64), ("count", u64)]


class blksnap_cbtdirty(ctypes.Structure):
    _fields_ = [("count", u32), ("dirty_sectors", u64)]


class blksnap_snapshotadd(ctypes.Structure):
    _fields_ = [("id", UUID)]


class blksnap_snapshotinfo(ctypes.Structure):
    _fields_ = [("error_code", s32), ("image", u8 * 32)]


class blksnap_version(ctypes.Structure):
    _fields_ = [("major", u16), ("minor", u16), ("revision", u16), ("build", u16)]


class blksnap_snapshot_create(ctypes.Structure):
    _fields_ = [("diff_storage_limit_sect", u64), ("diff_storage_filename", u64), ("id", UUID)]


class blksnap_snapshot_collect(ctypes.Structure):
    _fields_ = [("count", u32), ("ids", u64)]


class blksnap_snapshot_event(ctypes.Structure):
    _fields_ = [("id", UUID), ("timeout_ms", u32), ("code", u32), ("time_label", s64), ("data", u8 * (4096 - 32))]


class blksnap_event_corrupted(ctypes.Structure):
    _fields_ = [("dev_id_mj", u32), ("dev_id_mn", u32), ("err_code", s32)]


class blksnap_event_no_space(ctypes.Structure):
    _fields_ = [("requested_nr_sect", u64)]


# -- request numbers ----------------------------------------------------------------------------------------

BLKFILTER_TYPE = 0x12
BDEVFILTER_TYPE = ord("F")
BLKSNAP_TYPE = ord("V")

BLKFILTER_ATTACH = _IOWR(BLKFILTER_TYPE, 142, blkfilter_attach)
BLKFILTER_DETACH = _IOWR(BLKFILTER_TYPE, 143, blkfilter_detach)
BLKFILTER_CTL = _IOWR(BLKFILTER_TYPE, 144, blkfilter_ctl)

BDEVFILTER_ATTACH = _IOWR(BDEVFILTER_TYPE, 140, bdevfilter_name)
BDEVFILTER_DETACH = _IOWR(BDEVFILTER_TYPE, 141, bdevfilter_name)
BDEVFILTER_CTL = _IOWR(BDEVFILTER_TYPE, 142, bdevfilter_ctl)

IOCTL_BLKSNAP_VERSION = _IOR(BLKSNAP_TYPE, 0, blksnap_version)
IOCTL_BLKSNAP_SNAPSHOT_CREATE = _IOWR(BLKSNAP_TYPE, 1, blksnap_snapshot_create)
IOCTL_BLKSNAP_SNAPSHOT_DESTROY = _IOW(BLKSNAP_TYPE, 2, blksnap_uuid)
IOCTL_BLKSNAP_SNAPSHOT_TAKE = _IOW(BLKSNAP_TYPE, 3, blksnap_uuid)
IOCTL_BLKSNAP_SNAPSHOT_COLLECT = _IOR(BLKSNAP_TYPE, 4, blksnap_snapshot_collect)
IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT = _IOR(BLKSNAP_TYPE, 5, blksnap_snapshot_event)
IOCTL_BLKSNAP_MOD = _IOR(BLKSNAP_TYPE, 32, blksnap_mod)
IOCTL_BLKSNAP_SNAPSHOT_APPEND_STORAGE = _IOW(BLKSNAP_TYPE, 34, blksnap_snapshot_append_storage)


class BlkfilterCtl(enum.IntEnum):
    """``blkfilter_ctl.cmd`` values of the blksnap filter."""

    CBTINFO = 0
    CBTMAP = 1
    CBTDIRTY = 2
    SNAPSHOTADD = 3
    SNAPSHOTINFO = 4


class BlksnapEvent(enum.IntEnum):
    CORRUPTED = 0
    NO_SPACE = 1  # 2.0: the limit was reached; 7.x: low_free_space (storage given by ranges only)


FILTER_NAME_BLKSNAP = b"blksnap"
SECTOR = 512
CBTMAP_PIECE = 32 << 10  # read the CBT map in pieces of this many bytes


def filter_name() -> ctypes.Array[ctypes.c_uint8]:
    name = FILTER_NAME()
    ctypes.memmove(name, FILTER_NAME_BLKSNAP, len(FILTER_NAME_BLKSNAP))
    return name


# -- the two dialects ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FilterRequest:
    number: int
    struct: type[ctypes.Structure]


@dataclasses.dataclass(frozen=True)
class Dialect:
    """What differs between the module builds, as data; the kernel client reads it and never branches on
    which build it talks to (save on :attr:`filter_device`: where filter requests go)."""

    name: str
    control_device: str  # under /dev
    filter_device: str | None  # under /dev; None: filter requests go to the block device itself
    version_major: int
    attach: FilterRequest
    detach: FilterRequest
    ctl: FilterRequest
    mod_request: int | None  # the build-name request, where the module has one
    event_names: tuple[str, str]  # codes 0 and 1
    sysfs_filter: bool  # /sys/block/<dev>/filter names the attached filter


UPSTREAM = Dialect(
    name="upstream blksnap 2.0",
    control_device="blksnap-control",
    filter_device=None,
    version_major=2,
    attach=FilterRequest(BLKFILTER_ATTACH, blkfilter_attach),
    detach=FilterRequest(BLKFILTER_DETACH, blkfilter_detach),
    ctl=FilterRequest(BLKFILTER_CTL, blkfilter_ctl),
    mod_request=None,
    event_names=("corrupted", "no_space"),
    sysfs_filter=True,
)

STANDALONE = Dialect(
    name="Veeam standalone blksnap (veeamblksnap + bdevfilter)",
    control_device="veeamblksnap",
    filter_device="bdevfilter",
    version_major=7,
    attach=FilterRequest(BDEVFILTER_ATTACH, bdevfilter_name),
    detach=FilterRequest(BDEVFILTER_DETACH, bdevfilter_name),
    ctl=FilterRequest(BDEVFILTER_CTL, bdevfilter_ctl),
    mod_request=IOCTL_BLKSNAP_MOD,
    event_names=("corrupted", "low_free_space"),
    sysfs_filter=False,
)

DIALECTS = (UPSTREAM, STANDALONE)

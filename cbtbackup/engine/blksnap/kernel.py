"""Talking to the blksnap module: every request of the ABI, with the module's errors made into clear ones.

Everything goes through an :class:`Environment`: the ``ioctl`` function and where the module's devices
appear. The real one uses ``fcntl.ioctl``; tests put a simulator of the module behind the same call, so the
byte layouts and request numbers are exercised for real. Which module build is loaded — upstream 2.0 or
Veeam's standalone 7.x — is found from its devices (:func:`detect_dialect`); what differs between them is
data in :mod:`abi`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import stat
import uuid
from collections.abc import Callable
from typing import Any

from cbtbackup.engine.blksnap import abi
from cbtbackup.engine.cbt import CbtInfo
from cbtbackup.errors import BusyError, CbtError, NotFoundError, SnapshotFailedError, StorageError, UsageError

IoctlFn = Callable[[int, int, Any], int]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _libc_ioctl(fd: int, request: int, arg: Any) -> int:
    """ioctl(2) on ``arg``'s memory, which the kernel fills in place.

    Not ``fcntl.ioctl``: before Python 3.14 it holds the GIL through the call when the argument is over
    1 KiB, and WAIT_EVENT's is 4 KiB — every thread of the backup would stop for as long as the wait
    blocks. A ctypes call releases the GIL."""
    result: int = _libc.ioctl(fd, request, ctypes.addressof(arg))
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


@dataclasses.dataclass(frozen=True)
class Environment:
    ioctl: IoctlFn = _libc_ioctl
    dev_root: str = "/dev"  # control, filter and image devices
    sys_block: str = "/sys/block"
    run_dir: str = "/run/cbtbackup/blksnap"  # which snapshots cbtbackup runs created (gone at reboot, as they are)


DEFAULT_ENVIRONMENT = Environment()
_current = DEFAULT_ENVIRONMENT


def current_environment() -> Environment:
    """The environment backups use unless told otherwise (tests swap in a simulator with :func:`use`)."""
    return _current


def use(env: Environment) -> Environment:
    """Make ``env`` the current environment; returns the previous one."""
    global _current
    previous, _current = _current, env
    return previous


class ModuleMissingError(NotFoundError):
    """The blksnap module is not loaded."""


def detect_dialect(env: Environment = DEFAULT_ENVIRONMENT) -> abi.Dialect:
    """The loaded module's dialect, by its devices: ``blksnap-control`` is upstream 2.0, ``veeamblksnap`` with
    ``bdevfilter`` is Veeam's standalone 7.x."""
    def present(name: str | None) -> bool:
        return name is None or os.path.exists(os.path.join(env.dev_root, name))

    for dialect in abi.DIALECTS:
        if present(dialect.control_device) and present(dialect.filter_device):
            return dialect
    if present(abi.STANDALONE.control_device):
        raise ModuleMissingError(f"the veeamblksnap module is loaded but bdevfilter is not "
                                 f"({env.dev_root}/bdevfilter is missing): modprobe bdevfilter")
    raise ModuleMissingError(f"the blksnap module is not loaded (neither {env.dev_root}/blksnap-control nor "
                             f"{env.dev_root}/veeamblksnap is present)")


def module_loaded(env: Environment = DEFAULT_ENVIRONMENT) -> bool:
    try:
        detect_dialect(env)
    except ModuleMissingError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Event:
    code: abi.BlksnapEvent
    time_label: int
    device: tuple[int, int] = (0, 0)
    err_code: int = 0
    requested_sectors: int = 0


def _errno_message(e: OSError, what: str, messages: dict[int, str]) -> CbtError:
    code = e.errno or 0
    text = messages.get(code, os.strerror(code))
    if code in (errno.EBUSY, errno.EALREADY):
        return BusyError(f"{what}: {text}")
    if code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
        return NotFoundError(f"{what}: {text}")
    if code == errno.ENOSPC:
        return SnapshotFailedError(f"{what}: {text}")
    if code in (errno.EINVAL, errno.EPERM, errno.EACCES):
        return UsageError(f"{what}: {text}")
    return StorageError(f"{what}: {text}")


class BlksnapModule:
    """The control device: version, snapshots, events. Check :meth:`open` before anything else."""

    def __init__(self, env: Environment, dialect: abi.Dialect, fd: int) -> None:
        self.env = env
        self.dialect = dialect
        self.fd = fd

    @classmethod
    def open(cls, env: Environment = DEFAULT_ENVIRONMENT) -> BlksnapModule:
        abi.check_architecture()
        dialect = detect_dialect(env)
        path = os.path.join(env.dev_root, dialect.control_device)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}") from e
        module = cls(env, dialect, fd)
        try:
            version = module.version()
        except BaseException:
            module.close()
            raise
        if version[0] != dialect.version_major:
            module.close()
            raise UsageError(
                f"the blksnap module at {path} speaks ABI {version[0]}.{version[1]}; cbtbackup speaks "
                f"{dialect.version_major}.x there"
            )
        return module

    def device(self, path: str) -> BlockDevice:
        """``path``'s filter requests, in this module's dialect."""
        return BlockDevice(self.env, self.dialect, path)

    def build(self) -> tuple[str, int] | None:
        """(build name, compatibility flags) where the module tells them (7.x: ``standalone``)."""
        if self.dialect.mod_request is None:
            return None
        arg = abi.blksnap_mod()
        self._call(self.dialect.mod_request, arg, "blksnap build name")
        return bytes(arg.name).split(b"\0", 1)[0].decode(errors="replace"), arg.compatibility_flags

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _call(self, request: int, arg: Any, what: str, messages: dict[int, str] | None = None) -> None:
        try:
            self.env.ioctl(self.fd, request, arg)
        except OSError as e:
            raise _errno_message(e, what, messages or {}) from None

    def version(self) -> tuple[int, int, int, int]:
        v = abi.blksnap_version()
        self._call(abi.IOCTL_BLKSNAP_VERSION, v, "blksnap version")
        return v.major, v.minor, v.revision, v.build

    def snapshot_create(self, diff_storage: str, limit_bytes: int) -> uuid.UUID:
        path = ctypes.create_string_buffer(os.fsencode(diff_storage))
        arg = abi.blksnap_snapshot_create(limit_bytes // abi.SECTOR, ctypes.addressof(path))
        self._call(abi.IOCTL_BLKSNAP_SNAPSHOT_CREATE, arg, f"create a snapshot with storage {diff_storage}", {
            errno.ENOSPC: "the limit is below the storage's current size",
            errno.EINVAL: "the difference storage must be a directory, a regular file or a block device",
        })
        return uuid.UUID(bytes=bytes(arg.id))

    def snapshot_take(self, snap_id: uuid.UUID) -> None:
        self._call(abi.IOCTL_BLKSNAP_SNAPSHOT_TAKE, _uuid(snap_id), "take the snapshot", {
            errno.ESRCH: "no such snapshot", errno.EALREADY: "it was taken already",
            errno.ENODEV: "it holds no device", errno.EFAULT: "it is corrupted already",
        })

    def snapshot_destroy(self, snap_id: uuid.UUID) -> None:
        self._call(abi.IOCTL_BLKSNAP_SNAPSHOT_DESTROY, _uuid(snap_id), "destroy the snapshot",
                   {errno.ENODEV: "no such snapshot"})

    def snapshot_collect(self) -> list[uuid.UUID]:
        arg = abi.blksnap_snapshot_collect(0, 0)
        self._call(abi.IOCTL_BLKSNAP_SNAPSHOT_COLLECT, arg, "list snapshots")
        while True:
            ids = (abi.UUID * max(arg.count, 1))()
            arg = abi.blksnap_snapshot_collect(arg.count, ctypes.addressof(ids))
            try:
                self.env.ioctl(self.fd, abi.IOCTL_BLKSNAP_SNAPSHOT_COLLECT, arg)
            except OSError as e:
                if e.errno == errno.ENODATA:  # a snapshot appeared since we asked for the count
                    arg = abi.blksnap_snapshot_collect(0, 0)
                    self._call(abi.IOCTL_BLKSNAP_SNAPSHOT_COLLECT, arg, "list snapshots")
                    continue
                raise _errno_message(e, "list snapshots", {}) from None
            return [uuid.UUID(bytes=bytes(ids[i])) for i in range(arg.count)]

    def wait_event(self, snap_id: uuid.UUID, timeout_ms: int) -> Event | None:
        """The next event, or None when the wait timed out or was interrupted.

        The module counts ``timeout_ms`` in jiffies, not milliseconds; callers wait in a loop, so only
        the order of magnitude matters.
        """
        arg = abi.blksnap_snapshot_event()
        ctypes.memmove(arg.id, snap_id.bytes, 16)
        arg.timeout_ms = timeout_ms
        try:
            self.env.ioctl(self.fd, abi.IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT, arg)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return None
            raise _errno_message(e, "wait for snapshot events", {errno.ESRCH: "no such snapshot"}) from None
        code = abi.BlksnapEvent(arg.code)
        if code is abi.BlksnapEvent.CORRUPTED:
            data = abi.blksnap_event_corrupted.from_buffer_copy(bytes(arg.data)[: ctypes.sizeof(
                abi.blksnap_event_corrupted)])
            # 7.x sends a positive errno, upstream a negative one: keep the magnitude
            return Event(code, arg.time_label, (data.dev_id_mj, data.dev_id_mn), err_code=abs(data.err_code))
        space = abi.blksnap_event_no_space.from_buffer_copy(bytes(arg.data)[:8])
        return Event(code, arg.time_label, requested_sectors=space.requested_nr_sect)


class BlockDevice:
    """One block device's filter requests (attach, detach, CBT, snapshot membership).

    Upstream sends them to the device's own descriptor; the standalone module takes them on its filter device
    and names the device by a path. For CTL and DETACH that is ``/proc/self/fd/N`` of the descriptor opened
    here, so the request reaches exactly the device that was opened and checked, whatever a symlink in /dev
    points to by then. ATTACH is different: the module keeps its path string for as long as the filter stays
    attached and opens it again at every TAKE — from whichever process takes — so ATTACH names the device by
    its kernel node in /dev (``/dev/loop0``, ``/dev/dm-3``), checked to be this very device."""

    def __init__(self, env: Environment, dialect: abi.Dialect, path: str) -> None:
        self.env = env
        self.dialect = dialect
        self.path = path
        self._filter_fd = -1
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such device") from None
        except OSError as e:
            raise StorageError(f"cannot open {path}: {e.strerror}") from e
        st = os.fstat(self.fd)
        if not stat.S_ISBLK(st.st_mode):
            os.close(self.fd)
            raise UsageError(f"{path} is not a block device")
        self.rdev = st.st_rdev
        self._devpath: ctypes.Array[ctypes.c_char] | None = None
        if dialect.filter_device is None:
            self._filter_fd = self.fd
        else:
            filter_path = os.path.join(env.dev_root, dialect.filter_device)
            try:
                self._filter_fd = os.open(filter_path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                os.close(self.fd)
                raise StorageError(f"cannot open {filter_path}: {e.strerror}") from e
            self._devpath = ctypes.create_string_buffer(f"/proc/self/fd/{self.fd}".encode())

    @property
    def major_minor(self) -> tuple[int, int]:
        return os.major(self.rdev), os.minor(self.rdev)

    def close(self) -> None:
        if self._filter_fd >= 0 and self._filter_fd != self.fd:
            os.close(self._filter_fd)
        self._filter_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _request(self, request: abi.FilterRequest, devpath: ctypes.Array[ctypes.c_char] | None = None,
                 **fields: Any) -> ctypes.Structure:
        """The argument of a filter request: the filter's name, the device where the dialect names it."""
        if self._devpath is not None:
            fields["devpath"] = ctypes.addressof(devpath or self._devpath)
        return request.struct(name=abi.filter_name(), **fields)

    def lasting_path(self) -> str:
        """A path that names this device for as long as it exists: its kernel node in /dev."""
        node = os.path.realpath(self.path)
        try:
            st = os.stat(node)
        except OSError:
            st = None
        if st is None or not stat.S_ISBLK(st.st_mode) or st.st_rdev != self.rdev:
            raise UsageError(f"{self.path}: no device node names it lastingly ({node} is not this device)")
        return node

    def _ioctl(self, request: abi.FilterRequest, arg: ctypes.Structure, what: str, messages: dict[int, str]) -> None:
        try:
            self.env.ioctl(self._filter_fd, request.number, arg)
        except OSError as e:
            raise _errno_message(e, f"{what} {self.path}", messages) from None

    def attach_filter(self) -> bool:
        """Attach the blksnap filter; False if it was attached already."""
        lasting = ctypes.create_string_buffer(os.fsencode(self.lasting_path()))
        try:
            self.env.ioctl(self._filter_fd, self.dialect.attach.number, self._request(self.dialect.attach, lasting))
        except OSError as e:
            if e.errno == errno.EALREADY:
                return False
            raise _errno_message(e, f"attach the blksnap filter to {self.path}", {
                errno.ENOENT: "the blksnap module is not loaded",
                errno.EBUSY: "another filter is attached to it",
            }) from None
        return True

    def detach_filter(self) -> None:
        """Remove the filter — refused while a taken snapshot holds the device: the real module would
        detach, and new writes would then reach the snapshot's image unpreserved."""
        try:
            _, image = self.snapshot_info()
        except CbtError:
            image = ""  # in no taken snapshot
        if image:
            raise BusyError(f"{self.path} is in a taken snapshot (image {image}); detaching now would let new "
                            "writes into that snapshot: let its backup finish (or destroy it) first")
        self._detach()

    def _detach(self) -> None:
        self._ioctl(self.dialect.detach, self._request(self.dialect.detach), "detach the filter from",
                    {errno.ENOENT: "no blksnap filter is attached"})

    def _ctl(self, cmd: abi.BlkfilterCtl, opt: ctypes.Structure, what: str, messages: dict[int, str]) -> None:
        arg = self._request(self.dialect.ctl, cmd=int(cmd), optlen=ctypes.sizeof(opt), opt=ctypes.addressof(opt))
        self._ioctl(self.dialect.ctl, arg, what, {errno.ENOENT: "no blksnap filter is attached", **messages})

    def cbt_info(self) -> CbtInfo:
        info = abi.blksnap_cbtinfo()
        self._ctl(abi.BlkfilterCtl.CBTINFO, info, "read CBT info of", {})
        return CbtInfo(info.device_capacity, info.block_size, info.block_count,
                       uuid.UUID(bytes=bytes(info.generation_id)), info.changes_number)

    def cbt_map(self, block_count: int) -> bytes:
        """The whole CBT map, read in pieces of 32 KiB."""
        out = bytearray()
        buf = ctypes.create_string_buffer(abi.CBTMAP_PIECE)
        while len(out) < block_count:
            length = min(abi.CBTMAP_PIECE, block_count - len(out))
            arg = abi.blksnap_cbtmap(len(out), length, ctypes.addressof(buf))
            self._ctl(abi.BlkfilterCtl.CBTMAP, arg, "read the CBT map of", {errno.ENODATA: "past the map's end"})
            out += buf.raw[:length]
        return bytes(out)

    def mark_dirty(self, ranges: list[tuple[int, int]]) -> None:
        """Mark byte ranges changed (CBTDIRTY takes 512-byte sectors)."""
        sectors = (abi.blksnap_sectors * len(ranges))(
            *[abi.blksnap_sectors(o // abi.SECTOR, -(-n // abi.SECTOR)) for o, n in ranges])
        arg = abi.blksnap_cbtdirty(len(ranges), ctypes.addressof(sectors))
        self._ctl(abi.BlkfilterCtl.CBTDIRTY, arg, "mark dirty blocks of", {})

    def snapshot_add(self, snap_id: uuid.UUID) -> None:
        arg = abi.blksnap_snapshotadd()
        ctypes.memmove(arg.id, snap_id.bytes, 16)
        self._ctl(abi.BlkfilterCtl.SNAPSHOTADD, arg, "add to the snapshot", {
            errno.ESRCH: "no such snapshot", errno.EALREADY: "it is in the snapshot already",
            errno.EBUSY: "it is in another snapshot",
        })

    def snapshot_info(self) -> tuple[int, str]:
        """(error_code, image name): a negative error code once the snapshot is corrupted."""
        arg = abi.blksnap_snapshotinfo()
        self._ctl(abi.BlkfilterCtl.SNAPSHOTINFO, arg, "read snapshot info of", {})
        return arg.error_code, bytes(arg.image).split(b"\0", 1)[0].decode()

    def attached_filter(self) -> str | None:
        """The filter /sys/block says is attached, if any (None where sysfs does not say)."""
        if not self.dialect.sysfs_filter:
            return None
        name = os.path.basename(os.path.realpath(self.path))
        for candidate in (f"{self.env.sys_block}/{name}/filter",
                          *(str(p) for p in _partition_filter_paths(self.env.sys_block, name))):
            try:
                with open(candidate) as f:
                    return f.read().strip() or None
            except OSError:
                continue
        return None


def _partition_filter_paths(sys_block: str, name: str) -> list[str]:
    try:
        return [f"{sys_block}/{disk}/{name}/filter" for disk in os.listdir(sys_block)
                if os.path.isdir(f"{sys_block}/{disk}/{name}")]
    except OSError:
        return []


def _uuid(snap_id: uuid.UUID) -> abi.blksnap_uuid:
    arg = abi.blksnap_uuid()
    ctypes.memmove(arg.b, snap_id.bytes, 16)
    return arg

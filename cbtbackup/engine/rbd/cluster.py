"""Reaching a Ceph cluster: librados and librbd through the Python bindings Debian ships with Ceph.

Debian's ``python3-rados`` and ``python3-rbd`` are built for Debian's own Python (3.11 on bookworm) and
live in ``/usr/lib/python3/dist-packages``, which another interpreter of the same version (a venv, pyenv)
does not search: when the plain import fails, that directory is tried, and when that fails too the error
says what to install. Every call is bounded by one timeout (``--ceph-timeout``, 30 s by default):
a cluster that does not answer ends in one line, never a hang. librados's own log lines are kept off
stderr; its errors become cbtbackup's (:func:`ceph_error`).
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import os
import sys
from types import TracebackType
from typing import Any, Self

from cbtbackup.engine.rbd.names import RbdSpec
from cbtbackup.errors import BusyError, CbtError, NotFoundError, PermissionDeniedError, StorageError

DEBIAN_BINDINGS = "/usr/lib/python3/dist-packages"
DEFAULT_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class CephOptions:
    """Which cluster, as whom: the ``rbd`` command's defaults where unset ($CEPH_CONF or
    /etc/ceph/ceph.conf, client.admin, the keyring the configuration names)."""

    conf: str | None = None
    client_id: str | None = None  # the cephx user without "client."
    keyring: str | None = None
    timeout: float = DEFAULT_TIMEOUT


def bindings() -> tuple[Any, Any]:
    """The ``rados`` and ``rbd`` modules."""
    try:
        return importlib.import_module("rados"), importlib.import_module("rbd")
    except ImportError:
        pass
    if os.path.isdir(DEBIAN_BINDINGS) and DEBIAN_BINDINGS not in sys.path:
        sys.path.append(DEBIAN_BINDINGS)  # last: nothing of the venv's own is shadowed
        try:
            return importlib.import_module("rados"), importlib.import_module("rbd")
        except ImportError:
            pass
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    raise NotFoundError(f"Ceph's Python bindings (rados, rbd) do not import under Python {version} "
                        "(Debian: apt install python3-rbd python3-rados; they serve Debian's own Python "
                        "version — see docs/ceph.md)")


def ceph_error(e: Exception, doing: str) -> CbtError:
    """The error of cbtbackup's tree for a librados/librbd exception met while ``doing``."""
    code = getattr(e, "errno", None)
    code = abs(code) if isinstance(code, int) else None
    message = str(e)
    # The bindings' messages read "[errno 2] RBD image not found (error opening image b'x' ...)": keep the
    # words, drop the number and the bytes literals.
    if message.startswith("[errno"):
        message = message.split("] ", 1)[-1]
    message = message.split(" (", 1)[0]
    classes: dict[int, type[CbtError]] = {errno.ENOENT: NotFoundError, errno.EACCES: PermissionDeniedError,
                                          errno.EPERM: PermissionDeniedError, errno.EBUSY: BusyError,
                                          errno.EEXIST: BusyError, errno.ENOTEMPTY: BusyError}
    if code == errno.ETIMEDOUT:
        return StorageError(f"{doing}: the Ceph cluster did not answer in time (--ceph-timeout)")
    return classes.get(code or 0, StorageError)(f"{doing}: {message}")


class Cluster:
    """One connection to the cluster; a context manager."""

    def __init__(self, options: CephOptions) -> None:
        self.rados, self.rbd = bindings()
        seconds = str(int(max(1, options.timeout)))
        conf = {"client_mount_timeout": seconds, "rados_mon_op_timeout": seconds,
                "rados_osd_op_timeout": seconds, "log_to_stderr": "false", "err_to_stderr": "false"}
        if options.keyring:
            conf["keyring"] = options.keyring
        self.options = options
        try:
            self._handle: Any = self.rados.Rados(conffile=options.conf or "", rados_id=options.client_id,
                                                 conf=conf)
            self._handle.connect(timeout=int(seconds))
        except self.rados.Error as e:
            raise ceph_error(e, "cannot connect to the Ceph cluster") from None
        except FileNotFoundError:  # a configuration file that is not there
            raise NotFoundError(f"{options.conf}: no such Ceph configuration file") from None

    @property
    def fsid(self) -> str:
        fsid: str = self._handle.get_fsid()
        return fsid

    def ioctx(self, spec: RbdSpec) -> Any:
        """An I/O context on the image's pool and namespace."""
        try:
            ioctx = self._handle.open_ioctx(spec.pool)
        except self.rados.Error as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                raise NotFoundError(f"{spec}: the pool {spec.pool!r} does not exist") from None
            raise ceph_error(e, f"cannot open the pool {spec.pool!r}") from None
        if spec.namespace:
            ioctx.set_namespace(spec.namespace)
        return ioctx

    def ioctx_of_pool(self, pool_id: int, namespace: str) -> Any:
        """An I/O context on the pool numbered ``pool_id`` (where an image's group lives)."""
        try:
            ioctx = self._handle.open_ioctx2(pool_id)
        except self.rados.Error as e:
            raise ceph_error(e, f"cannot open the pool numbered {pool_id}") from None
        if namespace:
            ioctx.set_namespace(namespace)
        return ioctx

    def errors(self) -> tuple[type[Exception], ...]:
        """The exception classes of both bindings, for ``except``."""
        return self.rados.Error, self.rbd.Error

    def close(self) -> None:
        self._handle.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["CephOptions", "Cluster", "bindings", "ceph_error"]

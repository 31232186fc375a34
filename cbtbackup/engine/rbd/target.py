"""An RBD image as the target of a restore.

A new image is created under a temporary name beside the target's, written, and renamed into place only
when the restore checked out, so an interrupted restore never leaves a half image under the name the user
asked for. An existing image is rewritten only when asked (``force`` or ``onto_existing``) and never while
another client watches it (a VM, ``rbd map``, ``rbd-nbd``): that is an image in use, as a mounted device is.
"""

from __future__ import annotations

import secrets
from typing import Any

from cbtbackup.engine.rbd.cluster import CephOptions, Cluster, ceph_error
from cbtbackup.engine.rbd.names import RbdSpec, parse_rbd
from cbtbackup.errors import BusyError, CbtError, NotFoundError


def with_leftover(error: CbtError, stays: str) -> CbtError:
    """``error``, its line extended by what a failed restore could not remove."""
    if stays:
        error.args = (f"{error.args[0]}; {stays}",)
    return error


class RbdTarget:
    def __init__(self, target: str, ceph: CephOptions, size: int, *, existing: bool, overwrite: bool) -> None:
        """``existing``: the image must exist and is written in place (onto-existing); ``overwrite``: it may
        exist and is then rewritten in place; otherwise it must not exist."""
        self.spec: RbdSpec = parse_rbd(target)
        self._cluster = Cluster(ceph)
        self._rbd = self._cluster.rbd
        self._errors = self._cluster.errors()
        self._image: Any = None
        self._ioctx: Any = None
        self._temp: str | None = None
        self._closed = False
        self.fresh = False  # a new image: every byte reads as zero before the restore writes
        try:
            self._ioctx = self._cluster.ioctx(self.spec)
            there = self.spec.image in self._rbd.RBD().list(self._ioctx)
            if existing and not there:
                raise NotFoundError(f"{self.spec}: no such RBD image to restore onto")
            if there and not (existing or overwrite):
                raise BusyError(f"{self.spec} exists; add --force to overwrite it")
            if there:
                self._check_unwatched()
                self._image = self._rbd.Image(self._ioctx, self.spec.image)
                if self._image.size() != size:
                    self._image.resize(size)
            else:
                self._temp = f"{self.spec.image}.cbtbackup-restore-{secrets.token_hex(4)}"
                self._rbd.RBD().create(self._ioctx, self._temp, size, old_format=False)
                self._image = self._rbd.Image(self._ioctx, self._temp)
                self.fresh = True
        except self._errors as e:
            raise with_leftover(ceph_error(e, f"cannot open {self.spec} for the restore"), self.abandon()) \
                from None
        except BaseException:
            self.abandon()
            raise

    def _check_unwatched(self) -> None:
        # A read-only open sets no watch of its own, so every watcher it sees is another client.
        with self._rbd.Image(self._ioctx, self.spec.image, read_only=True) as image:
            watchers = list(image.watchers_list())
        if watchers:
            raise BusyError(f"{self.spec} is in use ({len(watchers)} watcher(s), e.g. {watchers[0]['addr']}: a "
                            "VM, rbd map or rbd-nbd); stop it before restoring onto it")

    def read(self, offset: int, length: int) -> bytes:
        return self._call(self._image.read, offset, length)  # type: ignore[no-any-return]

    def write(self, data: bytes | memoryview, offset: int) -> None:
        self._call(self._image.write, bytes(data), offset)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._call(self._image.write_zeroes, offset, length)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except self._errors as e:
            raise ceph_error(e, f"cannot write {self.spec}") from None

    def commit(self) -> None:
        """Flush; a new image takes the target's name."""
        self._call(self._image.flush)
        self._image.close()
        self._image = None
        if self._temp is not None:
            try:
                self._rbd.RBD().rename(self._ioctx, self._temp, self.spec.image)
            except self._errors as e:
                raise with_leftover(ceph_error(e, f"cannot name the restored image {self.spec} (it was created "
                                                  "meanwhile?)"), self.abandon()) from None
            self._temp = None
        self._close()

    def abandon(self) -> str:
        """Remove a new image that did not check out (an existing one keeps what was written); what could
        not be removed, as words for the error that caused it ("" if nothing stays)."""
        if self._image is not None:
            self._image.close()
            self._image = None
        temp, self._temp = self._temp, None
        stays = ""
        if temp is not None and self._ioctx is not None:
            try:
                self._rbd.RBD().remove(self._ioctx, temp)
            except self._errors as e:
                stays = (f"the partial image {self.spec.with_image(temp)} stays "
                         f"({ceph_error(e, 'removing it').args[0]}: rbd rm {self.spec.with_image(temp).path})")
        self._close()
        return stays

    def _close(self) -> None:
        if self._ioctx is not None:
            self._ioctx.close()
            self._ioctx = None
        if not self._closed:
            self._closed = True
            self._cluster.close()

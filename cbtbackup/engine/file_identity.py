"""What tells a tracker that an image file changed while nobody tracked it.

Every write to a file — ``write``, ``mmap``, ``truncate``, a loop device's I/O — updates its ``st_ctime``,
and unlike ``st_mtime`` (``touch -r``, ``utimensat``) no process can set it back. So the identity a closing
tracker records is (inode, size, ctime); if the next open finds another one, something wrote the file.

One subtlety: the kernel stamps ctime from a clock that advances in ticks (a few milliseconds), and a
write within the tick of the previous one may leave ctime as it was. :func:`settled_identity` therefore
waits, while the caller still excludes other writers, until the clock has moved past the recorded ctime:
any later write then gets a later stamp.
"""

from __future__ import annotations

import os
import stat
import time

Identity = tuple[int, int, int]  # (inode, size, ctime in ns); zeros for block devices
NS = 1_000_000_000
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # the clock ctime stamps come from


def image_identity(st: os.stat_result) -> Identity:
    if not stat.S_ISREG(st.st_mode):
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_ctime_ns)


def settled_identity(fd: int) -> Identity:
    """The identity of the file at ``fd`` once the timestamp clock has passed its ctime."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return (0, 0, 0)
    # File systems with whole-second stamps (ctime ends in .000000000) need the next second.
    granule = NS if st.st_ctime_ns % NS == 0 else 1
    deadline = time.monotonic() + 3
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) < st.st_ctime_ns + granule:
        if time.monotonic() > deadline:  # the clock went back: nothing to wait for
            break
        time.sleep(0.001)
    return image_identity(os.fstat(fd))

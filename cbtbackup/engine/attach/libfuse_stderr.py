"""libfuse's stderr without its one false alarm.

Debian 12's libfuse 3.14.0 prints "Ignoring invalid max threads value 4294967295 > max (100000)." whenever a
file system is served through ``fuse_main`` with several threads, whatever options it is given (fixed in
later libfuse releases); it then uses its default, so the line only alarms. The C library writes it to file
descriptor 2 directly, so for as long as a mount is served stderr passes through a pipe that drops that
line and forwards everything else unchanged, in order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

FALSE_ALARM = b"Ignoring invalid max threads value"


@contextlib.contextmanager
def without_false_alarm() -> Iterator[None]:
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if FALSE_ALARM not in line:
                    os.write(original, line)

    pump = threading.Thread(target=forward, name="stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last writer in this process: the pump reads to its end and stops
        pump.join(5)
        os.close(original)

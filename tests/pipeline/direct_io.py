"""Whether a folder's file system takes O_DIRECT (the restore's direct writes)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def supports_direct_io(folder: Path) -> bool:
    probe = folder / ".direct-probe"
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    finally:
        probe.unlink(missing_ok=True)
    return True

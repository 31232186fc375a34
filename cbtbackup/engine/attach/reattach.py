"""Attaching every recorded image again (``cbtbackup track --reattach-all``, run at boot by the systemd unit).

Each image is attached as it was (same mount directory, a loop device if it had one); a mount directory
under a runtime folder that a reboot emptied is made again. What the tracking is worth after the reboot is
the tracker's own decision when it opens the image: kept after a clean stop, a new generation (so a scan,
with the reason) after a crash. One image failing does not keep the others from being attached.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cbtbackup.engine.attach import registry
from cbtbackup.engine.attach.client import start_daemon, status
from cbtbackup.engine.attach.daemon import AttachOptions
from cbtbackup.engine.attach.record import live_record
from cbtbackup.engine.volume import default_state_dir
from cbtbackup.errors import CbtError


@dataclasses.dataclass(frozen=True)
class Outcome:
    image: str
    mountdir: str
    state: str  # "attached", "already attached" or "failed"
    loop: str | None = None
    generation_reason: str = ""  # why the tracker's current generation started (a crash shows here)
    error: str = ""

    def line(self) -> str:
        if self.state == "failed":
            return f"{self.image}: not re-attached: {self.error}"
        where = self.mountdir + "/volume" + (f" and {self.loop}" if self.loop else "")
        reason = f"; tracking: {self.generation_reason}" if self.generation_reason else ""
        return f"{self.image}: {self.state} as {where}{reason}"


def reattach_all() -> tuple[list[Outcome], list[str]]:
    """Attach every recorded image that is not attached; the outcomes, and lines about unreadable entries."""
    entries, bad = registry.entries()
    return [_reattach(entry) for entry in entries], bad


def _reattach(entry: registry.Entry) -> Outcome:
    state_dir = Path(entry.state_dir) if entry.state_dir else default_state_dir(Path(entry.image))
    try:
        record = live_record(state_dir)
        if record is not None:
            return Outcome(entry.image, record.mountdir, "already attached", record.loop)
        if not os.path.exists(entry.image):
            return Outcome(entry.image, entry.mountdir, "failed", error="no such file or device (its file "
                           "system not mounted yet?)")
        Path(entry.mountdir).mkdir(parents=True, exist_ok=True)
        record = start_daemon(AttachOptions(entry.image, entry.mountdir, entry.loop, entry.state_dir))
        info = status(entry.image, entry.state_dir)
        return Outcome(entry.image, record.mountdir, "attached", record.loop, str(info.get("generation_reason", "")))
    except (CbtError, OSError) as e:
        return Outcome(entry.image, entry.mountdir, "failed", error=str(e))

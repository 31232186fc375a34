"""What a backup remembers of the CBT state it was made from."""

from __future__ import annotations

import dataclasses
import uuid


@dataclasses.dataclass(frozen=True)
class CbtCheckpoint:
    """The tracker's generation and changes number at the snapshot a backup read, with its geometry."""

    generation_id: uuid.UUID
    changes_number: int
    block_size: int
    device_capacity: int

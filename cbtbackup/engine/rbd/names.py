"""``rbd:POOL/IMAGE`` and ``rbd:POOL/NAMESPACE/IMAGE``: how a source or target names an RBD image."""

from __future__ import annotations

import dataclasses

from cbtbackup.errors import UsageError

PREFIX = "rbd:"
FORM = "rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE"


@dataclasses.dataclass(frozen=True)
class RbdSpec:
    pool: str
    namespace: str  # "" for the pool's default namespace
    image: str

    def __str__(self) -> str:
        return PREFIX + self.path

    @property
    def path(self) -> str:
        """As the ``rbd`` command writes it: ``pool/image`` or ``pool/namespace/image``."""
        return "/".join(p for p in (self.pool, self.namespace, self.image) if p)

    def with_image(self, image: str) -> RbdSpec:
        return dataclasses.replace(self, image=image)


def is_rbd(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_rbd(name: str) -> RbdSpec:
    if not is_rbd(name):
        raise UsageError(f"{name!r} is not an RBD image ({FORM})")
    parts = name[len(PREFIX):].split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"{name!r}: an RBD image is named {FORM}")
    if "@" in parts[-1]:
        raise UsageError(f"{name!r}: name the image, not a snapshot (cbtbackup takes its own snapshots)")
    pool, image = parts[0], parts[-1]
    return RbdSpec(pool, parts[1] if len(parts) == 3 else "", image)
